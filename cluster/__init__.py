"""Where work runs: the Ray connection and resources, job submission, cluster configs (YAML)."""
