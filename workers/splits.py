"""The split names of a prepared dataset, torch-free so the orchestrator's job schema can read them."""

SPLITS = ("train", "search_valid", "dev", "test")
