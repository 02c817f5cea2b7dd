"""The split names of a prepared dataset, torch-free so the orchestrator's job schema can read them."""

SPLITS = ("train", "search_valid", "dev", "test")
NO_LABEL = -1  # the label of a row the teacher alone labels (an augmented copy, an unlabelled text)
# Optional: texts without labels that the teacher labels into the transfer set (task.unlabelled).
UNLABELLED = "unlabelled"


def present_splits(names) -> tuple[str, ...]:
    """SPLITS, then UNLABELLED when `names` (split names, or a mapping keyed by them) holds it: the order
    splits are fingerprinted, written and shown in."""
    return SPLITS + ((UNLABELLED,) if UNLABELLED in names else ())
