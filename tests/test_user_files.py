"""Files as people write them: pandas' and Excel's quoting, index columns, encodings, and the
one-line errors for what is not a table (binary files, folders, URLs, a numeric text column)."""

import csv
import re

import pandas as pd
import pytest

from orchestrator.config import load_job
from orchestrator.errors import AdarayError
from orchestrator.tasks import TaskConfig, load_task, read_table
from workers.dataset import SPLITS

TRICKY = ["a tab\tinside", 'say "hi" twice ""', "two\nlines", "a, comma", '"quoted whole"', "plain text",
          "NA", "trailing space ", "line\r\nbreak"]


def _frame(texts=TRICKY, n: int | None = None) -> pd.DataFrame:
    texts = list(texts) if n is None else [f"{texts[i % len(texts)]} {i}" for i in range(n)]
    return pd.DataFrame({"text": texts, "label": [("neg", "pos")[i % 2] for i in range(len(texts))]})


def _assert_same(got: pd.DataFrame, written: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(got.reset_index(drop=True), written.reset_index(drop=True), check_dtype=False)


def _raises(path, message: str, **kwargs) -> AdarayError:
    with pytest.raises(AdarayError, match=message) as caught:
        read_table(path, **kwargs)
    assert "\n" not in str(caught.value), str(caught.value)
    return caught.value


@pytest.mark.parametrize("index", [False, True], ids=["no_index", "index"])
@pytest.mark.parametrize("suffix, sep", [(".tsv", "\t"), (".csv", ",")])
def test_pandas_written_files_read_back_exactly(tmp_path, suffix, sep, index):
    df = _frame()
    path = tmp_path / f"d{suffix}"
    df.to_csv(path, sep=sep, index=index)
    got = read_table(path)
    assert list(got.columns) == ["text", "label"]  # the index column is dropped
    _assert_same(got, df)


def test_index_of_a_filtered_frame_and_a_reread_index_are_dropped(tmp_path):
    df = _frame(n=12)
    df.iloc[::3].to_csv(tmp_path / "filtered.csv")  # index 0, 3, 6, 9 under an empty header
    _assert_same(read_table(tmp_path / "filtered.csv"), df.iloc[::3])
    pd.read_csv(tmp_path / "filtered.csv").to_csv(tmp_path / "again.csv")  # "Unnamed: 0" becomes a header
    _assert_same(read_table(tmp_path / "again.csv"), df.iloc[::3])


def test_empty_header_columns_are_dropped_and_named_ones_kept(tmp_path):
    (tmp_path / "d.csv").write_text("text,label,\nfirst,a,\nsecond,b,\n")  # trailing commas, as Excel writes
    assert read_table(tmp_path / "d.csv").to_dict("list") == {"text": ["first", "second"], "label": ["a", "b"]}
    (tmp_path / "n.csv").write_text("id,text,label\n7,first,a\n3,second,b\n")  # a named id column is data
    assert list(read_table(tmp_path / "n.csv").columns) == ["id", "text", "label"]


@pytest.mark.parametrize("suffix, delimiter", [(".tsv", "\t"), (".csv", ",")])
def test_csv_module_files_with_embedded_newlines(tmp_path, suffix, delimiter):
    rows = [["text", "label"], ["first line\nsecond line", "a"], ['she said "no"\tthen left', "b"],
            ["ends with newline\n", "a"]]
    path = tmp_path / f"d{suffix}"
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter=delimiter).writerows(rows)
    _assert_same(read_table(path), pd.DataFrame(rows[1:], columns=rows[0]))


def test_raw_tsv_with_stray_quotes_keeps_the_quotes_as_text(tmp_path):
    rows = [('"Wow" he said', "pos"), ('an "unclosed quote', "neg"), ('mid "quoted" word', "pos")]
    path = tmp_path / "raw.tsv"
    path.write_text("text\tlabel\n" + "".join(f"{t}\t{label}\n" for t, label in rows))
    _assert_same(read_table(path), pd.DataFrame(rows, columns=["text", "label"]))


def test_compressed_csv_reads_back(tmp_path):
    df = _frame()
    df.to_csv(tmp_path / "d.csv.gz", index=False, encoding="utf-8-sig")
    _assert_same(read_table(tmp_path / "d.csv.gz"), df)


ACCENTED = ["café crème", "it’s “fine”", "naïve – déjà vu", "plain"]


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "cp1252"])
@pytest.mark.parametrize("suffix, sep", [(".tsv", "\t"), (".csv", ",")])
def test_encodings_excel_writes_read_cleanly(tmp_path, encoding, suffix, sep):
    df = _frame(ACCENTED)
    path = tmp_path / f"d{suffix}"
    df.to_csv(path, sep=sep, index=False, encoding=encoding)
    got = read_table(path)
    assert list(got.columns) == ["text", "label"]  # no BOM glued to the first header
    _assert_same(got, df)


def test_utf8_with_accents_is_never_read_as_cp1252(tmp_path):
    # "Ã©" is what UTF-8 "é" reads as in cp1252: a valid UTF-8 file must come back as written.
    (tmp_path / "d.csv").write_text("text,label\ncafé Ã©,a\n", encoding="utf-8")
    assert read_table(tmp_path / "d.csv")["text"].tolist() == ["café Ã©"]


def test_a_file_mixing_utf8_and_cp1252_is_a_one_line_error(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_bytes("text,label\ncafé,a\n".encode() + "it’s,b\n".encode("cp1252"))
    _raises(path, r"^task.path: .*mixed.csv is not UTF-8 text: save it as UTF-8")


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"


@pytest.mark.parametrize("name, content, what", [
    ("image.csv", PNG, "a PNG image"),
    ("nul.tsv", b"text\tlabel\nab\x00cd\tx\n", "binary data"),
    ("book.csv", b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00", "a ZIP archive; an Excel .xlsx"),
    ("noise.jsonl", bytes(range(1, 9)) * 40, "binary data"),
    ("wide.tsv", b"\xff\xfet\x00\x00\x00", "binary data"),  # a UTF-16 mark, then a NUL character
])
def test_binary_files_are_one_line_errors(tmp_path, name, content, what):
    (tmp_path / name).write_bytes(content)
    _raises(tmp_path / name, rf"^task.files.train: .*{re.escape(name)} is not a text table \(it is {re.escape(what)}",
            field="task.files.train")


def test_a_folder_is_named_as_a_folder(tmp_path):
    (tmp_path / "data.csv").mkdir()
    _raises(tmp_path / "data.csv", r"^task.path: .*data.csv is a folder, expected a CSV, TSV, JSONL or Parquet file$")
    with pytest.raises(AdarayError, match=r"is a folder, expected a CSV"):
        load_task(TaskConfig(path=str(tmp_path)))


@pytest.mark.parametrize("url", ["http://example.com/d.csv", "https://example.com/d.tsv",
                                 "s3://bucket/d.parquet", "gs://bucket/d.jsonl"])
def test_urls_are_refused_before_path_resolution(tmp_path, url):
    message = rf"URLs are not supported \({re.escape(url)}\); download the file first and give its local path"
    _raises(url, rf"^task.path: {message}$")
    with pytest.raises(ValueError, match=message):
        TaskConfig(path=url)
    with pytest.raises(ValueError, match=rf"test: {message}"):
        TaskConfig(files={"train": "a.csv", "test": url})
    job = tmp_path / "job.yaml"
    job.write_text(f"name: demo\ntask:\n  path: {url}\n")
    with pytest.raises(AdarayError, match=rf"job.yaml: task.path: {message}$"):
        load_job(job)


def test_a_numeric_text_column_is_refused_at_load_time(tmp_path):
    df = pd.DataFrame({"text": [str(i) for i in range(40)], "label": ["a", "b"] * 20,
                       "review": [f"review {i}" for i in range(40)]})
    df.loc[3, "text"] = ""
    df.to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(AdarayError, match=r"^task.text_column: column 'text' in .*d.csv holds only numbers "
                                          r"\(e.g. '0'\), not texts; set task.text_column to the column") as caught:
        load_task(TaskConfig(path=str(tmp_path / "d.csv")))
    assert "\n" not in str(caught.value)
    spec, splits = load_task(TaskConfig(path=str(tmp_path / "d.csv"), text_column="review"))
    assert sum(len(s) for s in splits.values()) == 40


def test_texts_holding_some_numbers_are_texts(tmp_path):
    df = pd.DataFrame({"text": [str(i) if i % 2 else f"text {i}" for i in range(40)], "label": ["a", "b"] * 20})
    df.to_csv(tmp_path / "d.csv", index=False)
    _, splits = load_task(TaskConfig(path=str(tmp_path / "d.csv")))
    assert sum(len(s) for s in splits.values()) == 40


def test_load_task_reads_a_pandas_quoted_tsv_with_string_labels(tmp_path):
    df = pd.DataFrame({"sentence": _frame(n=60)["text"], "sentiment": ["negative", "positive", "neutral"] * 20})
    path = tmp_path / "reviews.tsv"
    df.to_csv(path, sep="\t")  # quoted fields and an index column, as pandas writes them
    spec, splits = load_task(TaskConfig(path=str(path), text_column="sentence", label_column="sentiment"))
    assert spec.label_names == ("negative", "neutral", "positive")
    assert sum(len(splits[s]) for s in SPLITS) == 60
    texts = pd.concat([splits[s] for s in SPLITS]).sort_index()["text_a"]
    assert texts.tolist() == df["sentence"].tolist()
