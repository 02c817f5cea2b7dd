"""What a user would try before a distilled student: TF-IDF + logistic regression on the same split.

Word 1-2-grams and character 2-5-grams (within word boundaries), sublinear TF, then a logistic
regression (C = 4; balanced class weights when the task is scored by macro-F1). Scored in the
task's metric on dev and test, timed like nothing else here: it trains in seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from workers.dataset import read_meta, read_split_table
from workers.metrics import classification_scores


@dataclass(frozen=True)
class BaselineScores:
    dev: float
    test: float
    cpu_seconds: float
    metric: str


def _texts(prepared_dir, split: str, *, pair: bool) -> tuple[list[str], list[int]]:
    table = read_split_table(prepared_dir, split)
    a = table.column("text_a").to_pylist()
    texts = [f"{x} [SEP] {y}" for x, y in zip(a, table.column("text_b").to_pylist(), strict=True)] if pair else a
    return texts, table.column("label").to_pylist()


def tfidf_logreg(prepared_dir) -> BaselineScores:
    """Fit on train, score dev and test of a prepared task in its metric."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    meta = read_meta(prepared_dir)
    started = time.process_time()
    texts, labels = _texts(prepared_dir, "train", pair=meta.pair)
    model = make_pipeline(
        make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                   TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)),
        LogisticRegression(C=4.0, max_iter=2000, class_weight="balanced" if meta.metric == "f1_macro" else None),
    )
    model.fit(texts, labels)
    scores = {}
    for split in ("dev", "test"):
        x, y = _texts(prepared_dir, split, pair=meta.pair)
        predicted = torch.tensor(model.predict(x))
        scores[split] = classification_scores(predicted, torch.tensor(y), num_labels=meta.num_labels)[meta.metric]
    return BaselineScores(dev=scores["dev"], test=scores["test"], cpu_seconds=time.process_time() - started,
                          metric=meta.metric)
