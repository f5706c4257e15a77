"""Documents for the ``text`` task: the files under a path and the documents they hold.

- ``.txt`` / ``.md``: UTF-8 text. ``documents: file`` makes each file one document,
  ``paragraphs`` splits at blank lines, ``lines`` makes each non-blank line one; ``auto`` is
  ``file`` when there are several text files and ``paragraphs`` for a single one.
- ``.jsonl`` (and ``.json`` holding JSON lines): one JSON object per line, the document in
  its ``field``; a ``.json`` file whose text starts with ``[`` is an array of such objects.
- ``.parquet``: one document per row, in the column ``field`` (read with pyarrow).

A directory is searched recursively in sorted order; hidden files and folders (``.git``, the
token cache ``.ssmgraph_cache``) are skipped, and so are empty documents. Anything that
cannot be read is a :class:`TextDataError` naming the file and, for JSON, the line or record.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from ssmgraph.errors import SsmgraphError
from ssmgraph.train.tasks.text import BOM, TextDataError, read_utf8

TEXT_FILES = (".txt", ".md")
JSON_FILES = (".jsonl", ".json")
PARQUET_FILES = (".parquet",)
DATA_FILES = TEXT_FILES + JSON_FILES + PARQUET_FILES
DOCUMENT_MODES = ("auto", "file", "paragraphs", "lines")
_BLANK_LINES = re.compile(r"\r?\n[ \t\f\v]*\r?\n\s*")
_PARQUET_ROWS = 8192


def data_files(root: Path) -> list[Path]:
    """The data files at ``root`` (a file, or every data file under a directory, sorted)."""
    if not root.exists():
        raise TextDataError(f"{root}: no such file or directory")
    if not root.is_dir():
        if root.suffix.lower() not in DATA_FILES:
            raise TextDataError(f"{root}: not a data file the text task reads ({', '.join(DATA_FILES)})")
        return [root]
    files = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in DATA_FILES and not any(part.startswith(".") for part in p.relative_to(root).parts) and p.is_file()
    )
    if not files:
        raise TextDataError(f"{root}: no data files ({', '.join(DATA_FILES)}) in this directory")
    return files


def text_mode(files: list[Path], mode: str) -> str:
    """What ``auto`` means for these files: a document per file, unless there is one text file."""
    if mode != "auto":
        return mode
    return "file" if sum(p.suffix.lower() in TEXT_FILES for p in files) > 1 else "paragraphs"


def read_documents(files: list[Path], field: str, mode: str) -> Iterator[str]:
    """Every non-empty document of ``files``, in order (``mode`` as resolved by :func:`text_mode`)."""
    found = False
    for path in files:
        suffix = path.suffix.lower()
        if suffix in TEXT_FILES:
            documents = _text_documents(path, mode)
        elif suffix in PARQUET_FILES:
            documents = _parquet_documents(path, field)
        else:
            documents = _json_documents(path, field)
        for document in documents:
            if document.strip():
                found = True
                yield document
    if not found:
        where = files[0] if len(files) == 1 else f"{files[0].parent} ({len(files)} files)"
        raise TextDataError(f"{where}: no text (every document is empty); the text task needs text to learn from")


def _text_documents(path: Path, mode: str) -> list[str]:
    text = read_utf8(path, "text")
    if not text.strip():
        raise TextDataError(f"{path}: empty file; the text task needs text to learn from (remove the file)")
    if mode == "lines":
        return text.splitlines()
    if mode == "paragraphs":
        return _BLANK_LINES.split(text)
    return [text]


def _json_documents(path: Path, field: str) -> Iterator[str]:
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096).lstrip().removeprefix(BOM.encode()).lstrip()
    except OSError as exc:
        raise TextDataError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if path.suffix.lower() == ".json" and head.startswith(b"["):
        yield from _json_array(path, field)
        return
    empty = True
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8").removeprefix(BOM)
            except UnicodeDecodeError as exc:
                raise TextDataError(
                    f"{path}:{number}: not UTF-8 (invalid byte 0x{raw[exc.start]:02x}); convert the file, e.g. with iconv -t UTF-8"
                ) from exc
            if not line.strip():
                continue
            empty = False
            yield _field(_parse_line(line, path, number), field, f"{path}:{number}")
    if empty:
        raise TextDataError(f"{path}: empty file; a JSON lines file holds one object per line (remove the file)")


def _parse_line(line: str, path: Path, number: int) -> object:
    try:
        return json.loads(line)
    except (ValueError, RecursionError) as exc:
        why = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        raise TextDataError(f"{path}:{number}: not a JSON object ({why}); each line must hold one JSON object") from None


def _json_array(path: Path, field: str) -> Iterator[str]:
    try:
        records = json.loads(read_utf8(path, "text"))
    except (ValueError, RecursionError) as exc:
        why = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        raise TextDataError(f"{path}: not JSON ({why}); give a JSON array of objects, or JSON lines") from None
    if not isinstance(records, list) or not records:
        raise TextDataError(f"{path}: expected a non-empty JSON array of objects, each with a {field!r} field")
    for index, record in enumerate(records):
        yield _field(record, field, f"{path}: record {index}")


def _field(record: object, field: str, where: str) -> str:
    if not isinstance(record, dict):
        raise TextDataError(f"{where}: expected a JSON object with a {field!r} field, got {type(record).__name__}")
    if field not in record:
        keys = ", ".join(map(repr, list(record)[:10])) or "none"
        raise TextDataError(f"{where}: no field {field!r} (its fields: {keys}); name the text field with -t field=NAME")
    value = record[field]
    if not isinstance(value, str):
        raise TextDataError(f"{where}: field {field!r} holds {type(value).__name__}, not a string")
    return value


def _parquet_documents(path: Path, field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq  # optional: only .parquet files need it
    except ImportError as exc:
        raise SsmgraphError(
            f"{path}: reading .parquet files needs pyarrow: pip install pyarrow (datasets installs it too)"
        ) from exc
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise TextDataError(f"{path}: not a readable Parquet file ({exc})") from None
    schema = parquet.schema_arrow
    if field not in schema.names:
        raise TextDataError(
            f"{path}: no column {field!r} (its columns: {', '.join(map(repr, schema.names))}); name the text column with -t field=NAME"
        )
    kind = str(schema.field(field).type)
    if kind not in ("string", "large_string", "string_view"):
        raise TextDataError(f"{path}: column {field!r} holds {kind}, not strings")
    row = 0
    for batch in parquet.iter_batches(batch_size=_PARQUET_ROWS, columns=[field]):
        for value in batch.column(0).to_pylist():
            if value is None:
                raise TextDataError(f"{path}: row {row}: column {field!r} is null")
            row += 1
            yield value
    if row == 0:
        raise TextDataError(f"{path}: no rows; the text task needs text to learn from (remove the file)")
