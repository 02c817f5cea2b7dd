"""The teacher cache's storage: any pyarrow filesystem (local, s3://, gs://, hdfs://) or, for
other schemes, an fsspec one, with atomic writes (temp name, then a move) and checksums."""

from __future__ import annotations

import hashlib
import json
import os
import uuid

import pyarrow as pa
import pyarrow.fs as pafs


def normalise_uri(uri: str) -> str:
    """Plain paths become absolute (actors may run in another working directory)."""
    return uri if "://" in uri else os.path.abspath(os.path.expanduser(uri))


def resolve_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    uri = normalise_uri(uri)
    if "://" not in uri:
        return pafs.LocalFileSystem(), uri
    try:
        return pafs.FileSystem.from_uri(uri)
    except pa.ArrowInvalid:  # a scheme pyarrow lacks: let fsspec provide it
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def is_file(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.File


def file_size(fs: pafs.FileSystem, path: str) -> int:
    return fs.get_file_info(path).size


def write_atomic(fs: pafs.FileSystem, path: str, data: bytes | pa.Buffer) -> None:
    """Write under a unique temp name in the same folder, then move into place."""
    folder, name = path.rsplit("/", 1)
    fs.create_dir(folder, recursive=True)
    tmp = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, path)
    except BaseException:
        if is_file(fs, tmp):
            fs.delete_file(tmp)
        raise


def sha256_of(fs: pafs.FileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(fs: pafs.FileSystem, path: str) -> dict | None:
    if not is_file(fs, path):
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode())


def write_json(fs: pafs.FileSystem, path: str, data: dict) -> None:
    write_atomic(fs, path, json.dumps(data, indent=2).encode())
