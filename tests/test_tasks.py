"""Task loading: built-ins, local files, hub (mocked at the network boundary), splits, defaults."""

import datasets
import pandas as pd
import pytest
from pydantic import ValidationError

from orchestrator.errors import AdarayError
from orchestrator.tasks import BUILTINS, TaskConfig, load_task, read_table
from workers.dataset import SPLITS


def _reviews(n_per_class: int = 40, *, labels=("neg", "pos")) -> pd.DataFrame:
    rows = [{"review": f"review {i} of class {label}: {'fine ' * (i % 7)}", "stars": label}
            for label in labels for i in range(n_per_class)]
    return pd.DataFrame(rows)


def _ids(splits) -> dict[str, set]:
    return {s: set(df.index) for s, df in splits.items()}


def _assert_partition(splits, total: int) -> None:
    ids = _ids(splits)
    assert sum(len(v) for v in ids.values()) == total
    assert len(set().union(*ids.values())) == total  # no row on two sides


@pytest.fixture(scope="module")
def rotten():
    return load_task(TaskConfig(builtin="rotten_tomatoes"))


def test_rotten_tomatoes_counts_and_documented_split(rotten):
    spec, splits = rotten
    assert spec.label_names == ("rotten", "fresh") and spec.metric == "accuracy" and not spec.pair
    labels = pd.concat([df["label"] for df in splits.values()])
    assert len(labels) == 12_752
    assert (labels == 1).sum() == 7_368 and (labels == 0).sum() == 5_384
    assert {s: len(df) for s, df in splits.items()} == {"train": 10_207, "search_valid": 626, "dev": 959, "test": 960}
    _assert_partition(splits, 12_752)


def test_rotten_tomatoes_split_is_by_movie_and_identical_across_loads(rotten):
    _, splits = rotten
    builtin = BUILTINS["rotten_tomatoes"]
    movie_of = builtin.clean(read_table(builtin.location))["movie_name"]
    movies = {s: set(movie_of.loc[df.index]) for s, df in splits.items()}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            assert not movies[a] & movies[b], f"a movie is in both {a} and {b}"
    _, again = load_task(TaskConfig(builtin="rotten_tomatoes"))
    for split in SPLITS:
        pd.testing.assert_frame_equal(splits[split], again[split])


def test_clothing_reviews_counts_and_stratified_split():
    spec, splits = load_task(TaskConfig(builtin="clothing_reviews"))
    assert spec.label_names == ("not_recommended", "recommended") and spec.metric == "f1_macro"
    labels = pd.concat([df["label"] for df in splits.values()])
    assert len(labels) == 22_634 and (labels == 1).sum() == 18_534 and (labels == 0).sum() == 4_100
    assert {s: len(df) for s, df in splits.items()} == {"train": 18_107, "search_valid": 1_132, "dev": 1_697,
                                                         "test": 1_698}
    for df in splits.values():  # stratified: every split keeps the 18% minority share
        assert abs((df["label"] == 0).mean() - 4_100 / 22_634) < 0.005
    _assert_partition(splits, 22_634)


def test_csv_without_split_gets_a_fixed_seed_stratified_split(tmp_path):
    path = tmp_path / "reviews.csv"
    _reviews().to_csv(path, index=False)
    task = TaskConfig(path=str(path), text_column="review", label_column="stars")
    spec, splits = load_task(task)
    assert spec.name == "reviews" and spec.label_names == ("neg", "pos") and spec.metric == "accuracy"
    assert {s: len(df) for s, df in splits.items()} == {"train": 64, "search_valid": 4, "dev": 6, "test": 6}
    _assert_partition(splits, 80)
    for df in splits.values():
        assert set(df["label"]) == {0, 1}
        assert list(df.columns) == ["text_a", "label"] and df.index.name == "id"
    assert _ids(load_task(task)[1]) == _ids(splits)
    assert _ids(load_task(task.model_copy(update={"split_seed": 1}))[1]) != _ids(splits)


def test_given_train_and_test_files_carve_the_other_splits_from_train(tmp_path):
    train, test = _reviews(40), _reviews(5)
    train.to_csv(tmp_path / "train.tsv", sep="\t", index=False)
    test.to_csv(tmp_path / "test.tsv", sep="\t", index=False)
    task = TaskConfig(files={"train": str(tmp_path / "train.tsv"), "test": str(tmp_path / "test.tsv")},
                      text_column="review", label_column="stars")
    _, splits = load_task(task)
    assert splits["test"]["text_a"].tolist() == test["review"].tolist()
    assert len(splits["train"]) + len(splits["search_valid"]) + len(splits["dev"]) == 80
    assert len(splits["search_valid"]) == 4 and len(splits["dev"]) == 6
    _assert_partition(splits, 90)


def test_group_column_keeps_each_group_on_one_side(tmp_path):
    df = _reviews(100)
    df["product"] = [f"p{i % 37}" for i in range(len(df))]
    df.to_json(tmp_path / "reviews.jsonl", orient="records", lines=True)
    _, splits = load_task(TaskConfig(path=str(tmp_path / "reviews.jsonl"), text_column="review",
                                     label_column="stars", group_column="product"))
    groups = {s: set(df.loc[d.index, "product"]) for s, d in splits.items()}
    assert sum(len(g) for g in groups.values()) == 37
    assert all(len(d) for d in splits.values())


def test_max_examples_takes_a_fixed_slice_of_each_split(rotten):
    task = TaskConfig(builtin="rotten_tomatoes", max_examples=100)
    _, small = load_task(task)
    _, full = rotten
    for split in SPLITS:
        assert len(small[split]) == 100 and set(small[split].index) <= set(full[split].index)
    assert _ids(load_task(task)[1]) == _ids(small)


def test_label_names_give_the_class_order_and_int_labels_sort_numerically(tmp_path):
    df = pd.DataFrame({"text": [f"text {i}" for i in range(90)], "label": [2, 10, 1] * 30})
    df.to_parquet(tmp_path / "d.parquet")

    def class_of_text_1(task):  # "text 1" has label 10
        spec, splits = load_task(task)
        rows = pd.concat(splits.values())
        return spec, rows.set_index("text_a").loc["text 1", "label"]

    spec, label = class_of_text_1(TaskConfig(path=str(tmp_path / "d.parquet")))
    assert spec.label_names == ("1", "2", "10") and label == 2 and spec.metric == "f1_macro"  # three classes
    spec, label = class_of_text_1(TaskConfig(path=str(tmp_path / "d.parquet"), label_names=[10, 2, 1]))
    assert spec.label_names == ("10", "2", "1") and label == 0


def test_imbalanced_binary_task_defaults_to_f1_macro(tmp_path):
    df = pd.DataFrame({"text": [f"t {i}" for i in range(100)], "label": ["a"] * 80 + ["b"] * 20})
    df.to_csv(tmp_path / "d.csv", index=False)
    assert load_task(TaskConfig(path=str(tmp_path / "d.csv")))[0].metric == "f1_macro"
    assert load_task(TaskConfig(path=str(tmp_path / "d.csv"), metric="accuracy"))[0].metric == "accuracy"


def test_pair_task_from_jsonl(tmp_path):
    df = pd.DataFrame({"sentence1": [f"first {i}" for i in range(60)], "sentence2": [f"second {i}" for i in range(60)],
                       "label": [0, 1] * 30})
    df.to_json(tmp_path / "pairs.jsonl", orient="records", lines=True)
    spec, splits = load_task(TaskConfig(path=str(tmp_path / "pairs.jsonl"), text_column="sentence1",
                                        text_pair_column="sentence2"))
    assert spec.pair
    row = splits["train"].iloc[0]
    assert row["text_a"].replace("first", "second") == row["text_b"]


def _hub_dataset() -> datasets.DatasetDict:
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})

    def part(n, *, labelled=True):
        return datasets.Dataset.from_dict(
            {"sentence": [f"a sentence {i}" for i in range(n)], "label": [i % 2 if labelled else -1 for i in range(n)]},
            features=features)

    return datasets.DatasetDict({"train": part(80), "validation": part(10), "test": part(10, labelled=False)})


def test_hub_task_maps_splits_and_class_names(monkeypatch):
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append(a) or _hub_dataset())
    spec, splits = load_task(TaskConfig(hub="glue", hub_config="sst2", text_column="sentence"))
    assert calls == [("glue", "sst2")]
    assert spec.name == "glue-sst2" and spec.label_names == ("negative", "positive")
    assert len(splits["dev"]) == 10  # the hub's validation split
    # GLUE's test split has no labels: test is carved out of train like search_valid.
    assert {s: len(df) for s, df in splits.items() if s != "dev"} == {"train": 70, "search_valid": 4, "test": 6}
    _assert_partition(splits, 90)


def test_hub_offline_is_a_one_line_error(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(AdarayError, match=r"task.hub: could not load hub glue/sst2: Couldn't reach .*offline"):
        load_task(TaskConfig(hub="glue", hub_config="sst2", text_column="sentence"))


@pytest.mark.parametrize("fields, message", [
    ({}, "give one data source"),
    ({"builtin": "rotten_tomatoes", "path": "a.csv"}, "give one data source, not builtin and path"),
    ({"path": "a.csv", "hub_config": "sst2"}, "hub_config needs hub"),
    ({"builtin": "rotten_tomatoes", "text_column": "t"}, "fixes its columns and labels; remove text_column"),
    ({"path": "a.csv", "text_pair_column": "b"}, "pair task needs text_column"),
    ({"path": "a.csv", "text_column": "a", "text_pair_column": "a"}, "must differ"),
    ({"files": {"train": "a.csv", "valid": "b.csv"}}, "unknown split 'valid'"),
    ({"files": {"test": "b.csv"}}, "files needs a train file"),
    ({"path": "a.csv", "label_names": ["a", "a"]}, "at least two labels, each once"),
    ({"path": "a.csv", "name": "my task"}, "name may hold"),
])
def test_task_config_rejects_bad_combinations(fields, message):
    with pytest.raises(ValidationError, match=message):
        TaskConfig(**fields)
