"""The teacher cache on a real local Ray: actors, shards, resume, corruption, the reader, the CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from test_teacher import TINY_TEACHER, make_backbone, make_prepared, tiny_texts

from orchestrator.cli import main
from workers.cache import (
    MANIFEST,
    build_cache,
    cache_location,
    cache_state,
    open_cache,
    verify_cache,
)
from workers.config import AugmentConfig, CacheConfig
from workers.dataset import load_split, teacher_inputs
from workers.splits import NO_LABEL, UNLABELLED
from workers.teacher import load_teacher, prepare_teacher

CFG = CacheConfig(augment=AugmentConfig(copies=2), shard_size=64, batch_size=32, num_actors=2, store_hidden=True)
TRAIN, DEV = 128, 32  # make_prepared's sizes: 128 train rows x 3 copies = 6 shards, dev 1 shard


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, local_ray):
    root = tmp_path_factory.mktemp("cache")
    prepared = make_prepared(root / "prepared")
    teacher = prepare_teacher(source=str(make_backbone(root / "backbone")), cfg=TINY_TEACHER, prepared_dir=prepared,
                              out_root=root / "teachers", progress=False)
    return {"root": root, "prepared": prepared, "teacher": teacher.dir}


@pytest.fixture(scope="module")
def baseline(tiny):
    """A cache built once by 2 actors, uninterrupted."""
    return build_cache(teacher_dir=tiny["teacher"], prepared_dir=tiny["prepared"], cfg=CFG,
                       root_uri=str(tiny["root"] / "cache_a"), progress=False)


def _shas(uri: str) -> dict[str, str]:
    return {s["name"]: s["sha256"] for s in open_cache(uri).manifest["shards"]}


def test_two_actors_build_shards_that_line_up_with_the_prepared_split(baseline, tiny):
    assert not baseline.cache_hit and baseline.built_shards == 7 and baseline.repaired_shards == 0
    assert baseline.rows == {"train": 3 * TRAIN, "dev": DEV}
    assert verify_cache(baseline.uri).ok
    reader = open_cache(baseline.uri)
    train, prepared = reader.split("train"), load_split(tiny["prepared"], "train")
    assert len(train) == 3 * TRAIN and train.ids_a.shape == (3 * TRAIN, 16)
    width = prepared.ids_a.shape[1]
    assert torch.equal(train.ids_a[:TRAIN, :width], prepared.ids_a) and (train.ids_a[:TRAIN, width:] == 0).all()
    assert torch.equal(train.len_a[:TRAIN], prepared.len_a)
    for copy in range(3):  # copy-major: every copy block follows the prepared order
        assert torch.equal(train.example_ids[copy * TRAIN:(copy + 1) * TRAIN], prepared.example_ids)
    assert torch.equal(train.labels[:TRAIN], prepared.labels) and (train.labels[TRAIN:] == NO_LABEL).all()
    table = reader.table("train")
    assert table.column("copy").to_pylist() == [0] * TRAIN + [1] * TRAIN + [2] * TRAIN
    assert table.column("id").to_pylist() == list(range(3 * TRAIN))
    augmented = (train.ids_a[TRAIN:2 * TRAIN] != train.ids_a[:TRAIN]).any(dim=1)
    assert augmented.float().mean() > 0.5

    # The stored targets are the teacher's, for original and augmented rows alike.
    teacher = load_teacher(tiny["teacher"])
    rows = torch.tensor([0, 5, TRAIN + 5, 2 * TRAIN + 7, 3 * TRAIN - 1])
    batch = train.batch(rows)
    out = teacher(**teacher_inputs(batch, cls_id=101, sep_id=102, pad_id=0))
    assert torch.allclose(batch["teacher_logits"], out.logits, atol=1e-5)
    assert torch.allclose(batch["probe_logits"], out.probe_logits, atol=1e-5)
    assert torch.allclose(batch["hidden"], out.pooled, atol=2e-2)  # stored as float16
    assert train.probe_logits.shape == (3 * TRAIN, 3, 2) and train.hidden.dtype == torch.float16

    dev = reader.split("dev")  # one shard: the tensors view the memory-mapped file itself
    assert torch.equal(dev.labels, load_split(tiny["prepared"], "dev").labels)
    column = reader.table("dev").column("teacher_logits").chunks[0].flatten()
    assert dev.teacher_logits.data_ptr() == column.buffers()[1].address + 4 * column.offset


def test_same_key_reuses_the_cache(baseline, tiny, capsys):
    # Actor count and shard size do not change what the cache holds: still the same cache.
    cfg = CFG.model_copy(update={"num_actors": None, "shard_size": 1000, "batch_size": 8})
    again = build_cache(teacher_dir=tiny["teacher"], prepared_dir=tiny["prepared"], cfg=cfg,
                        root_uri=str(tiny["root"] / "cache_a"), progress=False)
    assert again.cache_hit and again.uri == baseline.uri and again.built_shards == 0
    assert f"cache: hit {baseline.key}" in capsys.readouterr().err
    other = CFG.model_copy(update={"augment": AugmentConfig(copies=2, seed=1)})
    assert cache_location(teacher_dir=tiny["teacher"], prepared_dir=tiny["prepared"], cfg=other,
                          root_uri=str(tiny["root"] / "cache_a")) != baseline.uri


def test_interrupted_build_resumes_to_byte_identical_shards(baseline, tiny, capsys):
    cfg = CFG.model_copy(update={"num_actors": 1})
    kwargs = {"teacher_dir": tiny["teacher"], "prepared_dir": tiny["prepared"], "cfg": cfg,
              "root_uri": str(tiny["root"] / "cache_b"), "progress": False}

    def stop_after_first(name: str) -> None:
        raise Interrupt(name)

    with pytest.raises(Interrupt):
        build_cache(**kwargs, on_shard_done=stop_after_first)
    uri = str(tiny["root"] / "cache_b" / baseline.key)
    state = cache_state(uri)
    assert state.state == "partial" and state.shards_done == 1
    with pytest.raises(ValueError, match="no complete teacher cache"):
        open_cache(uri)

    resumed = build_cache(**kwargs)
    assert "resuming" in capsys.readouterr().err
    assert resumed.uri == uri and resumed.built_shards == 6 and not resumed.cache_hit
    assert _shas(uri) == _shas(baseline.uri)  # 1 actor + resume == 2 actors uninterrupted, byte for byte
    names = sorted(p.name for p in (tiny["root"] / "cache_b" / baseline.key).iterdir())
    assert names == sorted([MANIFEST, *_shas(uri)])  # no progress or temp files left


def test_cli_verify_reports_a_flipped_byte_and_build_repairs_it(tiny, tmp_path, capsys):
    texts, labels = tiny_texts(200, seed=3)
    data = tmp_path / "reviews.csv"
    data.write_text("text,label\n" + "".join(f"{t},{'pos' if y else 'neg'}\n" for t, y in zip(texts, labels, strict=True)))
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "name": "tiny-cache", "workspace": str(tmp_path / "ws"),
        "task": {"path": str(data), "max_length": 16},
        "teacher": {**TINY_TEACHER.model_dump(), "model": str(tiny["root"] / "backbone")},
        "cache": {"augment": {"copies": 1}, "shard_size": 64, "batch_size": 32, "num_actors": 2},
    }))
    assert main(["cache", "build", str(job), "--quiet"]) == 0
    built = capsys.readouterr().out
    assert "built" in built and "shard(s)" in built
    assert main(["teacher", str(job), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "cache hit" in out and "dev accuracy" in out and "layer 2" in out and "probes.png" in out
    (plot,) = (tmp_path / "ws" / "teachers").glob("*/probes.png")  # drawn by the teacher stage from probes.json
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["cache", "verify", str(job)]) == 0
    assert "cache ok" in capsys.readouterr().out
    assert main(["cache", "info", str(job)]) == 0
    info = capsys.readouterr().out
    assert "complete" in info and "rows: train" in info and "size on disk" in info

    folder = next((tmp_path / "ws" / "cache").iterdir())
    manifest = json.loads((folder / MANIFEST).read_text())
    victim = folder / manifest["shards"][1]["name"]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert main(["cache", "verify", str(job)]) == 1
    out = capsys.readouterr().out
    assert f"corrupted {victim.name}" in out
    report = verify_cache(str(folder))
    assert not report.ok and report.bad_shards == [victim.name] and report.missing == []

    assert main(["cache", "build", str(job), "--quiet"]) == 0
    assert "1 repaired" in capsys.readouterr().out
    assert hashlib.sha256(victim.read_bytes()).hexdigest() == manifest["shards"][1]["sha256"]
    assert main(["cache", "verify", str(job)]) == 0


def test_pair_task_cache_keeps_both_sides(tiny, tmp_path):
    prepared = make_prepared(tmp_path / "pair", pair=True)
    teacher = prepare_teacher(source=str(tiny["root"] / "backbone"), cfg=TINY_TEACHER.model_copy(update={"epochs": 1}),
                              prepared_dir=prepared, out_root=tmp_path / "teachers", progress=False)
    cfg = CacheConfig(augment=AugmentConfig(copies=1, replace_prob=0.5), shard_size=100, num_actors=1)
    info = build_cache(teacher_dir=teacher.dir, prepared_dir=prepared, cfg=cfg, root_uri=str(tmp_path / "c"),
                       progress=False)
    train, source = open_cache(info.uri).split("train"), load_split(prepared, "train")
    width = source.ids_b.shape[1]
    assert torch.equal(train.ids_b[:TRAIN, :width], source.ids_b) and torch.equal(train.len_b[:TRAIN], source.len_b)
    assert (train.ids_b[TRAIN:] != train.ids_b[:TRAIN]).any(dim=1).float().mean() > 0.5
    assert train.hidden is None and train.teacher_logits.shape == (2 * TRAIN, 2)


def test_unlabelled_texts_follow_the_copies_once_each(tiny, tmp_path):
    """The task's unlabelled texts come after train's rows and their copies, each once, labelled by the teacher."""
    prepared, extra = make_prepared(tmp_path / "prepared", unlabelled=40), 40
    cfg = CacheConfig(augment=AugmentConfig(copies=1), shard_size=100, num_actors=1)
    info = build_cache(teacher_dir=tiny["teacher"], prepared_dir=prepared, cfg=cfg, root_uri=str(tmp_path / "c"),
                       progress=False)
    assert info.rows == {"train": 2 * TRAIN + extra, "dev": DEV}
    reader, texts = open_cache(info.uri), load_split(prepared, UNLABELLED)
    train, plain = reader.split("train"), open_cache(build_cache(
        teacher_dir=tiny["teacher"], prepared_dir=make_prepared(tmp_path / "plain"), cfg=cfg,
        root_uri=str(tmp_path / "c"), progress=False).uri).split("train")
    assert torch.equal(train.ids_a[:2 * TRAIN], plain.ids_a)  # the same copies as without the texts
    assert torch.equal(train.example_ids[2 * TRAIN:], texts.example_ids)
    assert torch.equal(train.ids_a[2 * TRAIN:, :texts.ids_a.shape[1]], texts.ids_a)
    assert (train.labels[:TRAIN] != NO_LABEL).all() and (train.labels[TRAIN:] == NO_LABEL).all()
    assert reader.table("train").column("copy").to_pylist() == [0] * TRAIN + [1] * TRAIN + [0] * extra
    picked = torch.tensor([2 * TRAIN, 2 * TRAIN + extra - 1])
    batch = train.batch(picked)
    out = load_teacher(tiny["teacher"])(**teacher_inputs(batch, cls_id=101, sep_id=102, pad_id=0))
    assert torch.allclose(batch["teacher_logits"], out.logits, atol=1e-5)


def test_a_cache_on_another_filesystem_is_read_without_a_memory_map(baseline):
    import fsspec

    memory = fsspec.filesystem("memory")
    for name in [MANIFEST, *_shas(baseline.uri)]:
        memory.pipe(f"/adaray-test/{baseline.key}/{name}", Path(baseline.uri, name).read_bytes())
    uri = f"memory://adaray-test/{baseline.key}"
    assert verify_cache(uri).ok
    remote, local = open_cache(uri).split("train"), open_cache(baseline.uri).split("train")
    assert torch.equal(remote.teacher_logits, local.teacher_logits) and torch.equal(remote.ids_a, local.ids_a)


def test_bad_inputs_fail_before_any_work(tiny, tmp_path):
    with pytest.raises(ValueError, match="not a teacher folder"):
        build_cache(teacher_dir=tmp_path, prepared_dir=tiny["prepared"], cfg=CFG, root_uri=str(tmp_path / "c"))
    three = make_prepared(tmp_path / "three")
    meta = json.loads((three / "meta.json").read_text())
    (three / "meta.json").write_text(json.dumps({**meta, "label_names": ["a", "b", "c"]}))
    with pytest.raises(ValueError, match="predicts 2 labels"):
        build_cache(teacher_dir=tiny["teacher"], prepared_dir=three, cfg=CFG, root_uri=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="no complete teacher cache"):
        verify_cache(str(tmp_path / "c" / "nothing"))
    assert not (tmp_path / "c").exists()
