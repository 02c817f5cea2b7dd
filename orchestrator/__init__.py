"""The driver: config, tasks and data, the pipeline, the Optuna outer loop, selection, MLflow."""
