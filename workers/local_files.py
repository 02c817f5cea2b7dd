"""Local files written so that a reader never sees half of one, and nothing a user owns is lost.

`write_text_atomic` and `publish_dir` are the one way the project writes a local file or folder
that something else trusts (status, metrics, students, teachers, prepared data);
`deliver_files` puts a folder's files into a user's folder without touching anything else there.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

# Written by `deliver_files` into the user's folder: which files it put there, so a later
# delivery with `force` may replace those and only those.
MANIFEST = ".adaray-files.json"


def write_file_atomic(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """`write(file)` into a unique temp file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_file_atomic(path, lambda f: f.write(text.encode()))


def write_json_atomic(path: str | Path, data, **dumps) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, **dumps))


def publish_dir(target: str | Path, write: Callable[[Path], None], *, replace: bool = False) -> Path:
    """Fill a private temp folder beside `target` with `write(folder)`, then rename it to `target`.

    When `target` exists: kept as it is (same key, same content: a concurrent writer won) unless
    `replace`, which swaps it out and restores it if the swap fails. The temp folder is removed on
    every path out.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    old = None
    try:
        write(tmp)
        # mkdtemp makes it private, and a writer's copytree copies a private source's mode onto it;
        # other users and nodes of a shared workspace read it.
        tmp.chmod(0o755)
        if target.exists():
            if not replace:
                return target
            old = tmp.with_name(tmp.name + ".old")
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        if old is not None and not target.exists():
            os.replace(old, target)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return target


class DestinationError(ValueError):
    """A destination folder that `deliver_files` must not write into."""


def check_destination(dst: str | Path, *, force: bool) -> Path:
    """`dst` as a folder files may be delivered to; DestinationError (one line) otherwise.

    A missing or empty folder is fine. A non-empty one needs `force`, and even then only the
    files a delivery writes (and the ones an earlier delivery listed in its manifest) change.
    """
    dst = Path(dst).expanduser()
    if dst.exists() and not dst.is_dir():
        raise DestinationError(f"{dst} is a file, not a folder; give -o a new or empty folder")
    parent = dst if dst.exists() else next((p for p in dst.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise DestinationError(f"cannot create {dst}: {parent} is a file")
    if not os.access(parent, os.W_OK):
        raise DestinationError(f"cannot write to {parent}: permission denied")
    if dst.is_dir() and any(dst.iterdir()) and not force:
        held = sorted(p.name for p in dst.iterdir())
        shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
        raise DestinationError(f"{dst} is not empty ({len(held)} entries: {shown}); give a new or empty folder, "
                               "or --force to replace only the student's files in it")
    return dst


def deliver_files(src: str | Path, dst: str | Path, *, force: bool = False) -> Path:
    """Copy the files of folder `src` into `dst`, deleting nothing that this function did not write.

    A new or empty `dst` appears whole in one rename. Into a non-empty one (`force` only) each
    file is staged beside its destination and renamed over it; files that an earlier delivery
    wrote (its manifest) and this one does not are removed; every other file stays untouched.
    """
    src, dst = Path(src), check_destination(dst, force=force)
    names = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file())

    def fill(folder: Path) -> None:
        shutil.copytree(src, folder, dirs_exist_ok=True)
        (folder / MANIFEST).write_text(json.dumps({"files": names}, indent=2))

    if not dst.exists() or not any(dst.iterdir()):
        if dst.exists():
            dst.rmdir()  # empty: nothing of the user's is lost, and the rename needs the name free
        return publish_dir(dst, fill)
    blocked = [name for name in names if (dst / name).is_dir()]
    if blocked:
        raise DestinationError(f"{dst / blocked[0]} is a folder where the student has a file; move it away first")
    earlier = _manifest(dst)
    with tempfile.TemporaryDirectory(prefix=f".{dst.name}.", dir=dst) as staging:
        fill(Path(staging))
        for name in [*names, MANIFEST]:
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(Path(staging) / name, dst / name)
    for name in sorted(set(earlier) - set(names)):
        (dst / name).unlink(missing_ok=True)
    return dst


def _manifest(folder: Path) -> list[str]:
    try:
        files = json.loads((folder / MANIFEST).read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    # Only plain relative names inside the folder: a hand-edited manifest cannot reach outside it.
    return [f for f in files if isinstance(f, str) and not Path(f).is_absolute() and ".." not in Path(f).parts]
