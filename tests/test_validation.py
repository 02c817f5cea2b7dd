"""Bad input fails with a one-line AdarayError before any expensive work, and nothing is written."""

import re
import shutil
from pathlib import Path

import datasets
import pandas as pd
import pytest

from orchestrator.cli import main
from orchestrator.config import load_job
from orchestrator.data import prepare
from orchestrator.errors import AdarayError
from orchestrator.tasks import TaskConfig
from orchestrator.teacher_source import MINILM, resolve_teacher_source


def _csv(tmp_path: Path, name: str = "d.csv", *, drop=(), **columns) -> str:
    """A text/label CSV of 40 rows (or as many as the given columns hold), columns replaced or dropped."""
    n = max([len(v) for v in columns.values()], default=40)
    default = {"text": [f"text {i}" for i in range(n)], "label": ["a", "b"] * (n // 2)}
    pd.DataFrame({**default, **columns}).drop(columns=list(drop)).to_csv(tmp_path / name, index=False)
    return str(tmp_path / name)


def _jsonl(tmp_path: Path, rows: list[dict]) -> str:
    pd.DataFrame(rows).to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    return str(tmp_path / "d.jsonl")


def _teacher_without_tokenizer(tmp_path: Path) -> str:
    folder = tmp_path / "teacher"
    folder.mkdir()
    shutil.copy(Path(resolve_teacher_source(MINILM)) / "config.json", folder)
    return str(folder)


def _teacher_without_weights(tmp_path: Path) -> str:
    folder = tmp_path / "teacher"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(Path(resolve_teacher_source(MINILM)) / name, folder)
    return str(folder)


# (name, how to build the task and teacher in tmp_path, the message)
CASES = [
    ("missing file", lambda p: ({"path": str(p / "nope.csv")}, MINILM), r"task.path: file not found: .*nope.csv"),
    ("missing given split file",
     lambda p: ({"files": {"train": _csv(p), "test": str(p / "test.csv")}}, MINILM),
     r"task.files.test: file not found"),
    ("unknown file type", lambda p: ({"path": str(p / "d.xlsx")}, MINILM),
     r"task.path: unknown file type 'd.xlsx'; use .csv, .tsv, .jsonl, .json or .parquet"),
    ("unreadable file", lambda p: ({"path": str(p / "d.parquet")}, MINILM), r"cannot read .*d.parquet as PARQUET"),
    ("unknown text column", lambda p: ({"path": _csv(p), "text_column": "txt"}, MINILM),
     r"task.text_column: no column 'txt' in .*d.csv \(did you mean 'text'\?\); columns: text, label$"),
    ("default text column absent", lambda p: ({"path": _csv(p, drop=["text"], review=["r"] * 40)}, MINILM),
     r"task.text_column: no column 'text' in .*d.csv; columns: label, review$"),
    ("unknown label column", lambda p: ({"path": _csv(p), "label_column": "lable"}, MINILM),
     r"task.label_column: no column 'lable' .*did you mean 'label'"),
    ("empty texts", lambda p: ({"path": _csv(p, text=[f"t{i}" for i in range(37)] + ["", "  ", None])}, MINILM),
     r"task.text_column: 3 of 40 rows of column 'text' in .*d.csv are empty or not text \(first: data row 38\)"),
    ("non-string texts", lambda p: ({"path": _jsonl(p, [{"text": i if i == 4 else f"t {i}", "label": i % 2}
                                                       for i in range(40)])}, MINILM),
     r"1 of 40 rows of column 'text' .* are empty or not text \(first: data row 5\)"),
    ("labels outside label_names",
     lambda p: ({"path": _csv(p, label=["a", "b", "c", "a"] * 10), "label_names": ["a", "b"]}, MINILM),
     r"task.label_names: 10 rows of 'label' in .* have labels not in label_names \['a', 'b'\] \(e.g. 'c'\)"),
    ("missing labels", lambda p: ({"path": _csv(p, label=["a", "b"] * 19 + [None, None])}, MINILM),
     r"task.label_column: 2 of 40 rows of 'label' .* have no label \(first: data row 39\)"),
    ("only one class", lambda p: ({"path": _csv(p, label=["a"] * 40)}, MINILM),
     r"train has only one class \('a'\); a classifier needs examples of at least two labels"),
    ("split with zero examples", lambda p: ({"path": _csv(p, text=["x", "y", "z", "w"], label=["a", "b"] * 2)}, MINILM),
     r"split 'search_valid' has no examples \(4 in all\)"),
    ("empty given split",
     lambda p: ({"files": {"train": _csv(p, text=[f"t {i}" for i in range(80)]),
                           "test": _csv(p, "t.csv", text=[], label=[])}}, MINILM),
     r"split 'test' has no examples"),
    ("pair data given one text column",
     lambda p: ({"path": _csv(p, drop=["text"], sentence1=["a"] * 40, sentence2=["b"] * 40)}, MINILM),
     r"looks like a pair task \(columns 'sentence1' and 'sentence2'\); set task.text_column: sentence1 and "
     r"task.text_pair_column: sentence2"),
    ("unknown pair column", lambda p: ({"path": _csv(p), "text_column": "text", "text_pair_column": "text2"}, MINILM),
     r"task.text_pair_column: no column 'text2'"),
    ("teacher path does not exist", lambda p: ({"path": _csv(p)}, str(p / "models" / "teacher")),
     r"teacher.model: no teacher folder at .*models/teacher"),
    ("teacher without tokenizer", lambda p: ({"path": _csv(p)}, _teacher_without_tokenizer(p)),
     r"teacher.model: .*teacher has no tokenizer \(none of tokenizer.json.*save it there"),
    ("teacher with a tokenizer but no weights", lambda p: ({"path": _csv(p)}, _teacher_without_weights(p)),
     r"teacher.model: .*teacher holds a tokenizer but no model \(config.json and \*.safetensors"),
    ("max_length over the teacher's limit", lambda p: ({"path": _csv(p), "max_length": 1024}, MINILM),
     r"task.max_length 1024 is over the teacher's limit of 512 tokens \(minilm\)"),
    ("missing unlabelled file", lambda p: ({"path": _csv(p), "unlabelled": str(p / "more.csv")}, MINILM),
     r"task.unlabelled: file not found: .*more.csv"),
    ("unlabelled file without the text column",
     lambda p: ({"path": _csv(p), "unlabelled": _csv(p, "u.csv", drop=["text"], review=["r"] * 40)}, MINILM),
     r"task.unlabelled \(.*u.csv\): no column 'text', the task's text_column; columns: label, review$"),
    ("empty unlabelled texts",
     lambda p: ({"path": _csv(p), "unlabelled": _csv(p, "u.csv", text=[f"u {i}" for i in range(39)] + [None])}, MINILM),
     r"task.text_column: 1 of 40 rows of column 'text' in task.unlabelled \(.*u.csv\) are empty or not text"),
    ("unlabelled texts that the labelled data holds", lambda p: ({"path": _csv(p), "unlabelled": _csv(p, "u.csv")}, MINILM),
     r"task.unlabelled \(.*u.csv\): every text is already in the task's labelled data"),
]


@pytest.mark.parametrize("build, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_one_line_error_and_writes_nothing(tmp_path, build, message):
    (tmp_path / "d.parquet").write_text("not parquet")
    (tmp_path / "d.xlsx").write_text("")
    task, teacher = build(tmp_path)
    ws = tmp_path / "ws"
    with pytest.raises(AdarayError) as caught:
        prepare(TaskConfig(**task), tokenizer_source=teacher, workspace=ws, progress=False)
    text = str(caught.value)
    assert "\n" not in text and re.search(message, text), text
    assert not ws.exists()


def test_hub_offline_writes_nothing(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(AdarayError, match=r"^task.hub: could not load hub glue/sst2: .*offline"):
        prepare(TaskConfig(hub="glue", hub_config="sst2"), tokenizer_source=MINILM, workspace=tmp_path / "ws")
    assert not (tmp_path / "ws").exists()


def test_unknown_key_in_job_file_suggests_the_right_one(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("name: demo\ntask:\n  path: d.csv\n  text_colum: review\n")
    with pytest.raises(AdarayError, match=r"unknown key 'task.text_colum' \(did you mean 'text_column'\?\)"):
        load_job(job)


@pytest.mark.parametrize("yaml_text, message", [
    ("teacher: {epochs: true}", r"teacher.epochs: expected a number, got a boolean"),
    ("cache: {augment: {copies: false}}", r"cache.augment.copies: expected a number, got a boolean"),
    ("outer_loop: {params: {beta: {lo: 0.1, high: 1}}}",
     r"unknown key 'outer_loop.params.beta.lo' \(did you mean 'low'\?\); allowed keys: low, high, log, int, choices$"),
    ("outer_loop: {params: {beta: {low: -1, high: 1}}}",
     r"outer_loop.params.beta: -1.0 is not a valid search.beta \(Input should be greater than or equal to 0\)$"),
    ("outer_loop: {params: {k_max: {choices: [99]}}}", r"outer_loop.params.k_max: 99 is not a valid space.k_max"),
    ("outer_loop: {params: {k_max: {choices: [4, x]}}}", r"outer_loop.params.k_max: 'x' is not a valid space.k_max"),
    ("outer_loop: {params: {embedding_rank: {choices: [null, 128]}}}",
     r"outer_loop.params.embedding_rank: 128 is not a valid space.embedding_rank \(embedding_rank must be null or an "
     r"int in 1..127"),
    ("task: {builtin: rotten_tomatoes, max_length: 100000}",
     r"task.max_length 100000 is over the teacher's limit of 512 tokens \(minilm\)"),
    ("small_transformers: [{layers: 2, hidden: 128, heads: 2, ffn: 512, init: teacher}]",
     r"small_transformers: L2-H128-teacher starts from the teacher's layers, so it needs the teacher's hidden 384, "
     r"at most its 12 heads of width 32 \(fewer keep the strongest; set head_dim: 32\), an ffn of at most 1536 "
     r"\(narrower keeps its strongest neurons\) and at most 6 layers; set those, or use init: projected$"),
    ("small_transformers: [{layers: 2, hidden: 384, heads: 6, ffn: 384, init: teacher}]", r"set head_dim: 32"),
    ("small_transformers: [{layers: 2, hidden: 384, heads: 16, head_dim: 32, init: teacher}]", r"at most its 12 heads"),
    ("small_transformers: [{layers: 2, hidden: 384, heads: 12, ffn: 2048, init: teacher}]", r"an ffn of at most 1536"),
    ("small_transformers: [{layers: 8, hidden: 384, heads: 12, ffn: 1536, init: teacher}]", r"at most 6 layers"),
    ("small_transformers: [{layers: 2, hidden: 100, heads: 3}]",
     r"small_transformers.0: transformer hidden \(100\) must be a multiple of heads \(3\)"),
    ("small_transformers: [{layers: 2, width: 128}]", r"unknown key 'small_transformers.0.width'"),
    ("outer_loop: {screen: {fidelity: full, epochs: 1}}",
     r"outer_loop.screen: epochs size the short screen, but fidelity: full retrains each candidate as the job's "
     r"retrain \(retrain.epochs\); drop them, or use fidelity: short$"),
], ids=["bool-int", "bool-nested", "range-key", "range-end", "choice-range", "choice-type", "rank-choice",
        "max-length", "transformer-not-the-teachers-size", "transformer-head-width", "transformer-more-heads",
        "transformer-wider-ffn", "transformer-deeper-than-the-teacher",
        "transformer-heads", "transformer-unknown-key", "full-screen-sized"])
def test_validate_refuses_values_the_job_would_fail_on_later(tmp_path, capsys, yaml_text, message):
    job = tmp_path / "job.yaml"
    body = yaml_text if yaml_text.startswith("task:") else f"task: {{builtin: rotten_tomatoes}}\n{yaml_text}"
    job.write_text(f"name: demo\nworkspace: ws\n{body}\n")
    assert main(["validate", str(job)]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "ws").exists()


def test_data_paths_are_relative_to_the_job_file(tmp_path):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "job.yaml").write_text("name: demo\ntask:\n  path: d.csv\n  unlabelled: ../more.csv\n")
    task = load_job(tmp_path / "jobs" / "job.yaml").task
    assert (task.path, task.unlabelled) == (str(tmp_path / "jobs" / "d.csv"), str(tmp_path / "more.csv"))


def test_job_file_task_errors_are_one_line(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("name: demo\ntask:\n  path: d.csv\n  builtin: rotten_tomatoes\n")
    with pytest.raises(AdarayError, match=r"job.yaml: task: give one data source, not builtin and path$"):
        load_job(job)


def test_cli_prints_one_error_line_and_exits_2(tmp_path, capsys):
    _csv(tmp_path)
    (tmp_path / "job.yaml").write_text("name: demo\nworkspace: ws\ntask:\n  path: d.csv\n  text_column: body\n")
    assert main(["data", "describe", str(tmp_path / "job.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: task.text_column: no column 'body'") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ws").exists()


def test_a_folder_as_the_job_file_is_named_as_a_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["validate", str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'empty'} is a folder; give a job YAML file"
    examples = Path(__file__).resolve().parents[1] / "examples"
    assert main(["validate", str(examples)]) == 2
    err = capsys.readouterr().err
    assert "is a folder; give a job YAML file, e.g." in err and "rotten_tomatoes.yaml" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("job_file", sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_example_job_validates(job_file, capsys):
    # The README points users at these files: one that stops validating is a broken instruction.
    assert main(["validate", str(job_file)]) == 0, capsys.readouterr().err
