"""Local file publishing: atomic writes, and deliveries that never delete what they did not write."""

from __future__ import annotations

import json
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from workers.local_files import MANIFEST, DestinationError, deliver_files, publish_dir, write_text_atomic


def _student(folder, **files):
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_delivery_into_a_new_folder_holds_the_files_and_a_manifest(tmp_path):
    src = _student(tmp_path / "src", **{"config.json": "{}", "model.safetensors": "w"})
    out = deliver_files(src, tmp_path / "new" / "student")
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, "config.json", "model.safetensors"])
    assert json.loads((out / MANIFEST).read_text())["files"] == ["config.json", "model.safetensors"]
    assert _leftovers(tmp_path / "new") == []


def test_a_non_empty_folder_is_refused_and_left_as_it_was(tmp_path):
    src = _student(tmp_path / "src", **{"config.json": "{}"})
    user = _student(tmp_path / "user", **{"main.py": "print(1)", "notes.txt": "mine"})
    with pytest.raises(DestinationError, match="not empty.*--force"):
        deliver_files(src, user)
    assert sorted(p.name for p in user.iterdir()) == ["main.py", "notes.txt"]


def test_force_replaces_only_the_students_files(tmp_path):
    user = _student(tmp_path / "user", **{"main.py": "print(1)", "config.json": "old"})
    deliver_files(_student(tmp_path / "v1", **{"config.json": "v1", "latency.json": "v1"}), user, force=True)
    assert (user / "main.py").read_text() == "print(1)"
    assert (user / "config.json").read_text() == "v1"
    # A second delivery drops the file the first one wrote and this one does not; main.py stays.
    deliver_files(_student(tmp_path / "v2", **{"config.json": "v2"}), user, force=True)
    assert sorted(p.name for p in user.iterdir()) == sorted([MANIFEST, "config.json", "main.py"])
    assert (user / "config.json").read_text() == "v2"


def test_a_file_as_destination_is_refused_without_leftovers(tmp_path):
    src = _student(tmp_path / "src", **{"config.json": "{}"})
    target = tmp_path / "existing.txt"
    target.write_text("keep me")
    with pytest.raises(DestinationError, match="is a file"):
        deliver_files(src, target, force=True)
    assert target.read_text() == "keep me"
    assert _leftovers(tmp_path) == []


def test_a_manifest_cannot_reach_outside_the_folder(tmp_path):
    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    user = _student(tmp_path / "user", **{MANIFEST: json.dumps({"files": ["../precious.txt", str(outside)]})})
    deliver_files(_student(tmp_path / "src", **{"config.json": "{}"}), user, force=True)
    assert outside.read_text() == "keep"


def test_publish_dir_cleans_up_when_the_writer_fails(tmp_path):
    def broken(folder):
        (folder / "half").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        publish_dir(tmp_path / "out", broken)
    assert list(tmp_path.iterdir()) == []


def test_publish_dir_replace_swaps_and_keeps_the_old_one_on_failure(tmp_path):
    publish_dir(tmp_path / "out", lambda f: (f / "v").write_text("1"))
    publish_dir(tmp_path / "out", lambda f: (f / "v").write_text("2"))  # exists: kept
    assert (tmp_path / "out" / "v").read_text() == "1"
    publish_dir(tmp_path / "out", lambda f: (f / "v").write_text("3"), replace=True)
    assert (tmp_path / "out" / "v").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_write_text_atomic_leaves_no_temp_file(tmp_path):
    write_text_atomic(tmp_path / "a" / "status.json", "{}")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["status.json"]


def test_a_published_folder_is_readable_by_others_even_when_copied_from_a_private_one(tmp_path):
    # copytree copies the source's mode: a TemporaryDirectory (0o700) made variants private
    with tempfile.TemporaryDirectory(dir=tmp_path) as private:
        (Path(private) / "model.onnx").write_text("g")
        out = publish_dir(tmp_path / "variant", lambda f: shutil.copytree(private, f, dirs_exist_ok=True))
        delivered = deliver_files(private, tmp_path / "pulled")
    assert stat.S_IMODE(out.stat().st_mode) == stat.S_IMODE(delivered.stat().st_mode) == 0o755
