"""Data files as people write them: CSV and TSV with standard quoting (as pandas and Excel write
them), index columns dropped, UTF-8/UTF-16/UTF-32 by their byte-order marks and cp1252 where that
cannot misread UTF-8, compressed files, and one-line errors for folders, URLs and binary files.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import lzma
import math
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from orchestrator.errors import AdarayError

if TYPE_CHECKING:  # pandas is imported where a file is read: validating a job file needs none
    import pandas as pd

_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet",
            ".pq": "parquet"}
_COMPRESSION = {".gz", ".bz2", ".xz", ".zst", ".zip", ".brotli"}
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")  # http://, https://, s3://, gs://, hf://, ...
# Byte-order marks, longest first (a UTF-32 LE mark begins with the UTF-16 LE one).
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"), (codecs.BOM_UTF8, "utf-8-sig"))
# What a binary file renamed to .csv most often is, by its first bytes (no text starts so).
_MAGIC = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF87a", "a GIF image"),
          (b"GIF89a", "a GIF image"), (b"%PDF-", "a PDF"),
          (b"PK\x03\x04", "a ZIP archive; an Excel .xlsx workbook is one"),
          (b"\xd0\xcf\x11\xe0", "an Excel .xls workbook"), (b"PAR1\x15", "a Parquet file; name it .parquet"),
          (b"\x1f\x8b", "gzip data; name it .csv.gz"))
# ASCII control bytes that text files do not hold (tab, newlines, form feed and escape are text).
_CONTROL = bytes([*range(1, 9), *range(14, 27), *range(28, 32), 127])
_NOT_CONTROL = bytes(b for b in range(256) if b not in _CONTROL)
# A UTF-8 multi-byte sequence: in a file that is not valid UTF-8 it marks mixed encodings.
_UTF8_SEQUENCE = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}")
_UNNAMED = re.compile(r"Unnamed: \d+")  # pandas' name for a column with an empty header


def _file_format(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes = suffixes[:-1]
    return _FORMATS.get(suffixes[-1]) if suffixes else None


def url_message(url: str) -> str:
    return f"URLs are not supported ({url}); download the file first and give its local path"


def check_file(path: str | Path, *, field: str) -> Path:
    if isinstance(path, str) and URL.match(path):  # before Path() folds "https://" into "https:/"
        raise AdarayError(f"{field}: {url_message(path)}")
    path = Path(path).expanduser()
    if path.is_dir():
        raise AdarayError(f"{field}: {path} is a folder, expected a CSV, TSV, JSONL or Parquet file")
    if not path.is_file():
        raise AdarayError(f"{field}: file not found: {path}")
    if _file_format(path) is None:
        raise AdarayError(f"{field}: unknown file type {path.name!r}; "
                          "use .csv, .tsv, .jsonl, .json or .parquet (optionally compressed)")
    return path


def read_table(path: str | Path, *, field: str = "task.path") -> pd.DataFrame:
    """One local data file as a DataFrame (CSV/TSV cells as strings: those formats have no types).

    Files as people write them: CSV and TSV with standard quoting (as pandas and Excel write them;
    a TSV that does not parse that way is read raw, its quotes as text), the index column that
    `df.to_csv(path)` writes dropped, UTF-8 with or without a BOM, UTF-16 or UTF-32 with a BOM, and
    cp1252/Latin-1 when the file is not valid UTF-8 and holds no UTF-8 sequences (so a UTF-8 file is
    never read as cp1252). A binary file is a one-line AdarayError, like every other problem.
    """
    import pandas as pd

    path = check_file(path, field=field)
    fmt = _file_format(path)
    try:
        if fmt == "parquet":
            return pd.read_parquet(path)
        raw = _read_bytes(path)
    except Exception as exc:  # parsers raise many types; the file is the user's to fix
        raise _cannot_read(path, fmt=fmt, field=field, exc=exc) from None
    text = _decode(raw, path=path, field=field)
    try:
        if fmt in ("jsonl", "json"):
            return pd.read_json(io.StringIO(text), lines=fmt == "jsonl", dtype=False, convert_dates=False)
        return _read_delimited(text, sep="\t" if fmt == "tsv" else ",", raw_fallback=fmt == "tsv")
    except Exception as exc:
        raise _cannot_read(path, fmt=fmt, field=field, exc=exc) from None


def _cannot_read(path: Path, *, fmt: str, field: str, exc: Exception) -> AdarayError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return AdarayError(f"{field}: cannot read {path} as {fmt.upper()}: {reason}")


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed."""
    suffix = path.suffix.lower()
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(suffix)
    if opener is not None:
        with opener(path, "rb") as f:
            return f.read()
    if suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/")]
            if len(names) != 1:
                raise ValueError(f"a .zip must hold exactly one file, not {len(names)}")
            return archive.read(names[0])
    if suffix == ".zst":
        import zstandard

        with path.open("rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as reader:
            return reader.read()
    if suffix == ".brotli":
        import brotli

        return brotli.decompress(path.read_bytes())
    return path.read_bytes()


def _decode(raw: bytes, *, path: Path, field: str) -> str:
    """A text file's bytes as text: by its byte-order mark, else UTF-8, else cp1252 where that cannot
    be a misread UTF-8 file; a binary file or an undecodable one is a one-line AdarayError."""
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError:
                raise AdarayError(f"{field}: {path} is not {encoding.removesuffix('-sig').upper()} text "
                                  "though it starts like it: save it as UTF-8") from None
            if "\x00" in text:
                raise AdarayError(f"{field}: {path} is not a text table (it is binary data); "
                                  "save it as CSV (UTF-8), TSV, JSONL or Parquet")
            return text
    if (what := _binary(raw)) is not None:
        raise AdarayError(f"{field}: {path} is not a text table (it is {what}); "
                          "save it as CSV (UTF-8), TSV, JSONL or Parquet")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if not _UTF8_SEQUENCE.search(raw):  # no UTF-8 in it: a cp1252 (Windows Latin-1) file
        try:
            return raw.decode("cp1252")
        except UnicodeDecodeError:
            pass
    raise AdarayError(f"{field}: {path} is not UTF-8 text: save it as UTF-8 (Excel: Save As, CSV UTF-8)")


def _binary(raw: bytes) -> str | None:
    """What a file is if it is not text (a known format by its first bytes, NUL bytes, or more than
    a few control bytes in its first 64 KiB), else None."""
    if (kind := next((name for magic, name in _MAGIC if raw.startswith(magic)), None)) is not None:
        return kind
    head = raw[:65536]
    if b"\x00" in raw or len(head.translate(None, _NOT_CONTROL)) > max(8, len(head) // 100):
        return "binary data"
    return None


def _read_delimited(text: str, *, sep: str, raw_fallback: bool) -> pd.DataFrame:
    """CSV or TSV text with standard quoting; with raw_fallback (TSV), text that does not parse
    that way (a stray quote: `"Wow" he said`) is read with no quoting, its quotes as text."""
    import pandas as pd

    quotings = [csv.QUOTE_MINIMAL]
    if raw_fallback and '"' in text:
        quotings = [csv.QUOTE_MINIMAL, csv.QUOTE_NONE] if _quotes_well_formed(text, sep=sep) else [csv.QUOTE_NONE]
    first_error = None
    for quoting in quotings:
        try:
            # Only empty cells are missing: "NA" or "null" in a text is text.
            df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_values=[""],
                             quoting=quoting)
        except (ValueError, csv.Error) as exc:  # pandas' ParserError is a ValueError
            first_error = first_error or exc
            continue
        return _drop_index_columns(df, header=_header(text, sep=sep, quoting=quoting))
    raise first_error


def _quotes_well_formed(text: str, *, sep: str) -> bool:
    """Whether every quoted field closes, and is followed by the separator or a line end."""
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, len(text) + 1))  # a long text is one long field
    try:
        for _ in csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True):
            pass
        return True
    except csv.Error:
        return False
    finally:
        csv.field_size_limit(limit)


def _header(text: str, *, sep: str, quoting: int) -> list[str]:
    for row in csv.reader(io.StringIO(text, newline=""), delimiter=sep, quoting=quoting):
        if row:
            return row
    return []


def _drop_index_columns(df: pd.DataFrame, *, header: list[str]) -> pd.DataFrame:
    """Without the columns that have no name: the index `df.to_csv(path)` writes (an empty header),
    a trailing separator's empty column, and a leading "Unnamed: 0" column of row numbers (an index
    read back by pandas and written again)."""
    if len(header) == len(df.columns):
        df = df.drop(columns=[c for c, h in zip(df.columns, header) if h == ""])
    if len(df.columns) and _UNNAMED.fullmatch(str(df.columns[0])):
        first = df[df.columns[0]]
        if first.notna().all() and first.str.fullmatch(r"\d+").all() and first.is_unique:
            df = df.drop(columns=df.columns[0])
    return df


def _number_like(value) -> bool | None:
    """True for a number or a string of one, None for an empty value, False for anything else."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, float, np.integer, np.floating)):
        return True
    if not isinstance(value, str):
        return False
    if not (value := value.strip()):
        return None
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def only_numbers(values: pd.Series):
    """The first value when every non-empty value is a number (or a string of one), else None."""
    first = None
    for value in values:  # a text column stops at its first text
        kind = _number_like(value)
        if kind is False:
            return None
        if kind and first is None:
            first = value
    return first
