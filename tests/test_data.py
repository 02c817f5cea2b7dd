"""The prepare stage with the real MiniLM tokenizer, the fingerprint, and the data commands."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer

from orchestrator.cli import main
from orchestrator.data import fingerprint, load_tokenizer, prepare, tokenize
from orchestrator.tasks import TaskConfig, load_task
from orchestrator.teacher_source import MINILM, resolve_teacher_source
from workers.dataset import (
    SPLITS,
    encode_texts,
    is_prepared,
    load_split,
    read_split_table,
    teacher_inputs,
    token_budget,
    tokenize_ids,
)
from workers.splits import NO_LABEL, UNLABELLED


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(MINILM)


def _write_tsv(path: Path, rows: list[tuple[str, str]]) -> str:
    path.write_text("sentence\tsentiment\n" + "".join(f"{t}\t{label}\n" for t, label in rows))
    return str(path)


def _user_files(tmp_path: Path) -> dict[str, str]:
    (tmp_path := tmp_path / "movies").mkdir()
    words = "a rather long and winding review that keeps going on and on about the film".split()
    train = [(f"{' '.join(words[: 3 + i % 14])} number {i}", "positive" if i % 2 else "negative") for i in range(80)]
    test = [(f'short "test" review {i}', "positive" if i % 2 else "negative") for i in range(10)]
    return {"train": _write_tsv(tmp_path / "train.tsv", train), "test": _write_tsv(tmp_path / "test.tsv", test)}


def test_resolve_teacher_source():
    folder = Path(resolve_teacher_source(MINILM))
    assert (folder / "tokenizer.json").is_file() and (folder / "config.json").is_file()
    assert resolve_teacher_source("bert-base-uncased") == "bert-base-uncased"  # a hub id: loaded later
    assert resolve_teacher_source(str(folder)) == str(folder)


def test_user_tsv_with_string_labels_end_to_end(tmp_path, tokenizer):
    task = TaskConfig(files=_user_files(tmp_path), text_column="sentence", label_column="sentiment", max_length=12)
    ws = tmp_path / "ws"
    prepared = prepare(task, tokenizer_source=MINILM, workspace=ws, progress=False)
    meta = prepared.meta
    assert not prepared.cache_hit and is_prepared(prepared.folder)
    assert prepared.folder == ws / "prepared" / meta.fingerprint
    assert meta.label_names == ("negative", "positive") and meta.task == "movies" and not meta.pair
    assert (meta.pad_id, meta.cls_id, meta.sep_id, meta.vocab_size) == (0, 101, 102, 30522)
    assert meta.sizes == {"train": 70, "search_valid": 4, "dev": 6, "test": 10}
    assert json.loads((prepared.folder / "meta.json").read_text())["fingerprint"] == meta.fingerprint

    test = read_split_table(prepared.folder, "test").to_pydict()
    assert test["text_a"][3] == 'short "test" review 3' and test["label"][3] == 1  # TSV: quotes are text
    assert test["ids_a"][3] == tokenizer('short "test" review 3', add_special_tokens=False)["input_ids"]

    train = load_split(prepared.folder, "train")
    assert len(train) == 70 and int(train.len_a.max()) == 10  # long reviews cut to 12 - 2
    assert set(train.labels.tolist()) == {0, 1}
    batch = train.batch(torch.arange(8))
    joint = teacher_inputs(batch, cls_id=meta.cls_id, sep_id=meta.sep_id, pad_id=meta.pad_id)
    assert joint["input_ids"].shape[1] <= 12 and (joint["input_ids"][:, 0] == 101).all()

    again = prepare(task, tokenizer_source=MINILM, workspace=ws, progress=False)
    assert again.cache_hit and again.folder == prepared.folder and again.meta == meta
    assert sorted(p.name for p in (ws / "prepared").iterdir()) == [meta.fingerprint]  # no temp left


def test_unlabelled_texts_are_prepared_apart_and_keep_the_teachers_key(tmp_path):
    """Texts without labels, written as Excel writes a sheet (UTF-8 with a BOM, CRLF, quoted fields, an index
    column): prepared after the labelled splits; repeats and texts the labelled data holds are left out."""
    files = _user_files(tmp_path)
    texts = [f'an "unlabelled" review, number {i}' for i in range(30)]
    held = pd.read_csv(files["test"], sep="\t")["sentence"].tolist()[:3]  # a user's whole corpus holds test texts
    pd.DataFrame({"sentence": texts + texts[:2] + held, "source": "web"}).to_csv(
        tmp_path / "more.csv", encoding="utf-8-sig", lineterminator="\r\n")
    task = TaskConfig(files=files, text_column="sentence", label_column="sentiment", max_length=12)
    with_texts = task.model_copy(update={"unlabelled": str(tmp_path / "more.csv")})
    plain = prepare(task, tokenizer_source=MINILM, workspace=tmp_path / "ws", progress=False).meta
    prepared = prepare(with_texts, tokenizer_source=MINILM, workspace=tmp_path / "ws", progress=False)
    meta = prepared.meta
    assert meta.sizes == {**plain.sizes, UNLABELLED: 30} and is_prepared(prepared.folder)
    assert meta.fingerprint != plain.fingerprint and meta.labelled_key == plain.fingerprint
    table = read_split_table(prepared.folder, UNLABELLED).to_pydict()
    assert table["text_a"] == texts and set(table["label"]) == {NO_LABEL}
    labelled_ids = {i for split in SPLITS for i in read_split_table(prepared.folder, split).column("id").to_pylist()}
    assert min(table["id"]) > max(labelled_ids) and len(set(table["id"])) == 30


def test_pair_task_truncates_each_side_to_half_the_budget(tmp_path):
    long = "one two three four five six seven eight nine ten eleven twelve"
    df = pd.DataFrame({"q": [f"{long} {i}" for i in range(40)], "a": ["short"] * 40, "label": [0, 1] * 20})
    df.to_csv(tmp_path / "pairs.csv", index=False)
    task = TaskConfig(path=str(tmp_path / "pairs.csv"), text_column="q", text_pair_column="a", max_length=16)
    prepared = prepare(task, tokenizer_source=MINILM, workspace=tmp_path / "ws", progress=False)
    assert prepared.meta.pair and token_budget(16, pair=True) == 6
    split = load_split(prepared.folder, "train")
    assert int(split.len_a.max()) == 6 and int(split.len_b.max()) == 1
    joint = teacher_inputs(split.batch(torch.arange(4)), cls_id=101, sep_id=102, pad_id=0)
    assert joint["input_ids"].shape[1] == 1 + 6 + 1 + 1 + 1
    assert joint["token_type_ids"][0].tolist() == [0] * 8 + [1] * 2


def test_fingerprint_is_stable_and_sensitive(tmp_path, tokenizer):
    df = pd.DataFrame({"text": [f"text number {i}" for i in range(80)], "label": ["a", "b"] * 40})
    df.to_csv(tmp_path / "d.csv", index=False)
    task = TaskConfig(path=str(tmp_path / "d.csv"))

    def key(t=task, **kwargs):
        spec, splits = load_task(t)
        key, labelled = fingerprint(spec, splits, tokenizer=tokenizer, max_length=kwargs.get("max_length", t.max_length))
        assert labelled == key  # no unlabelled texts
        return key

    base = key()
    assert key() == base and len(base) == 16
    assert key(max_length=32) != base
    assert key(task.model_copy(update={"split_seed": 1})) != base
    df.loc[5, "label"] = "a" if df.loc[5, "label"] == "b" else "b"
    df.to_csv(tmp_path / "d.csv", index=False)
    assert key() != base
    df.loc[5, "label"] = "b" if df.loc[5, "label"] == "a" else "a"  # back as it was: the same key again
    df.to_csv(tmp_path / "d.csv", index=False)
    assert key() == base
    df.loc[7, "text"] = "text number 7!"
    df.to_csv(tmp_path / "d.csv", index=False)
    assert key() != base


def test_tokenize_without_budget_keeps_full_length(tokenizer):
    text = "word " * 600  # longer than the teacher's 512: no warning, no cut
    assert [len(ids) for ids in tokenize([text, "a b"], tokenizer=tokenizer, budget=None)] == [600, 2]
    assert [len(ids) for ids in tokenize([text], tokenizer=tokenizer, budget=62)] == [62]


def test_cli_tasks_lists_the_builtins(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "rotten_tomatoes" in out and "12,752" in out and "10,207" in out
    assert "clothing_reviews" in out and "22,634" in out and "f1_macro" in out


def test_cli_data_describe(tmp_path, capsys):
    df = pd.DataFrame({"body": [("great " * (i % 70)) + f"item {i}" for i in range(200)],
                       "label": ["bad", "good"] * 100})
    df.to_csv(tmp_path / "reviews.csv", index=False)
    pd.DataFrame({"body": [f"more text {i}" for i in range(25)]}).to_csv(tmp_path / "more.csv", index=False)
    (tmp_path / "job.yaml").write_text(
        "name: demo\ntask:\n  path: reviews.csv\n  text_column: body\n  max_length: 32\n  unlabelled: more.csv\n")
    assert main(["data", "describe", str(tmp_path / "job.yaml")]) == 0
    out = capsys.readouterr().out
    for word in (*SPLITS, "p50", "p99", "bad 50.0%", "not prepared yet", "max_length 32"):
        assert word in out
    assert next(line for line in out.splitlines() if line.strip().startswith(UNLABELLED)).split()[1] == "25"
    # Texts up to 71 tokens: some rows are cut to fit 32.
    train_row = next(line for line in out.splitlines() if line.strip().startswith("train"))
    assert train_row.split()[-1] != "0.0%"


@pytest.mark.parametrize("metric", ["accuracy", "f1_macro"])
def test_a_score_no_better_than_the_majority_class_is_refused_in_the_tasks_metric(tmp_path, metric):
    from orchestrator.errors import AdarayError
    from orchestrator.pipeline import above_majority
    from workers.metrics import majority_score

    rows = [(f"review {i} of a film", "good" if i % 10 < 6 else ("bad" if i % 10 < 9 else "meh")) for i in range(400)]
    path = tmp_path / "reviews.csv"
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, index=False)
    task = TaskConfig(path=str(path), text_column="text", label_column="label", metric=metric)
    prepared = prepare(task, tokenizer_source=MINILM, workspace=tmp_path / "ws", progress=False)
    labels = load_split(prepared.folder, "dev").labels
    majority = majority_score(labels, num_labels=3, metric=metric)
    share = float((labels == torch.bincount(labels).argmax()).float().mean())
    assert majority == pytest.approx(share if metric == "accuracy" else 2 * share / (1 + share) / 3)
    with pytest.raises(AdarayError, match=f"no better than always predicting the majority class \\({majority:.4f}\\)"):
        above_majority(prepared, score=majority + 0.01, margin=0.02, who="the teacher", hint="train it longer")
    assert above_majority(prepared, score=majority + 0.03, margin=0.02, who="the teacher", hint="-") == majority


@pytest.mark.parametrize("pair", [False, True])
def test_prepare_and_predict_give_a_text_the_same_ids(tmp_path, pair):
    """A student at prediction time (workers.student.StudentPredictor calls tokenize_ids) sees the ids
    prepare stored: long texts cut alike, accents, emoji, odd spacing and markup included."""
    texts = ["Naïve café — déjà vu 😀 ", "  spaced\tout\n text ", "<b>HTML</b> &amp; more", "x" * 300,
             " ".join(f"word{i}" for i in range(200)), "short"] * 6
    df = pd.DataFrame({"text": texts, "other": texts[::-1], "label": ["a", "b"] * (len(texts) // 2)})
    df.to_csv(tmp_path / "d.csv")
    task = TaskConfig(path=str(tmp_path / "d.csv"), text_column="text", text_pair_column="other" if pair else None,
                      max_length=24)
    prepared = prepare(task, tokenizer_source=MINILM, workspace=tmp_path / "ws", progress=False)
    # What `adaray predict` loads: the tokenizer.json that save_student writes, read without transformers.
    load_tokenizer(MINILM).save_pretrained(str(tmp_path / "student"))
    tokenizer = Tokenizer.from_file(str(tmp_path / "student" / "tokenizer.json"))
    assert tokenizer.padding is not None  # MiniLM's file pads to 128 of its own accord; predict must not
    pad = tokenizer.token_to_id("[PAD]")
    longest = 0
    for split in SPLITS:
        table = read_split_table(prepared.folder, split)
        a, b = table.column("text_a").to_pylist(), table.column("text_b").to_pylist() if pair else None
        ids_a, ids_b = tokenize_ids(tokenizer, a, b, max_length=24)
        assert table.column("ids_a").to_pylist() == ids_a
        if pair:
            assert table.column("ids_b").to_pylist() == ids_b
        longest = max(longest, *map(len, ids_a))
        assert not any(pad in row for row in ids_a + (ids_b or []))  # whole texts, never padded
    assert longest == token_budget(24, pair=pair)  # the long texts were cut
    assert len(encode_texts(tokenizer, ["word " * 300], budget=None)[0]) == 300  # nor cut at the file's 128
