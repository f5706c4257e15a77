"""The ``text`` task's token cache: documents tokenized once, then memory-mapped on every run.

A cache is three files named by its key, ``text-KEY.tokens`` (every document's ids followed
by the end-of-document id, as raw uint16, or uint32 for vocabularies over 65,536),
``text-KEY.docs`` (per document, int64: the end of its ids in the token file and its UTF-8
byte count) and ``text-KEY.json`` (a small header: dtype, counts, vocabulary, the eod id).
The key is a sha256 of the cache format, each data file's path relative to the data root,
its size and its modification time (in ns; contents are not read, so an edit that keeps
both is not seen: ``touch`` the file), the reading options and the tokenizer's fingerprint
(its files' sha256).

Where: in ``.ssmgraph_cache/`` beside the data (the data folder, or the data file's folder);
in ``$SSMGRAPH_CACHE`` when that is set; and in ``~/.cache/ssmgraph/text`` (or
``$XDG_CACHE_HOME/ssmgraph/text``) for the bundled corpus or when the data's folder is not
writable. Files are written under temporary names and renamed into place, the header last:
a kill leaves no cache (the next run tokenizes again), never a partial one. A header whose
files do not match it is ignored and the cache rebuilt. Processes that build the same cache at
once take turns on a lock file (``.text-KEY.lock``), so one tokenizes and the others map its
result. A new cache replaces those of earlier versions of the same data: the same root and
settings (the header's ``source``) but other files, sizes or times.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssmgraph.safeio import JSONRefused, parse_json
from ssmgraph.train.tasks.tokenizing import TextTokenizer

try:
    import fcntl
except ImportError:  # not on Windows: concurrent first runs then each tokenize (the result is the same)
    fcntl = None  # type: ignore[assignment]

FORMAT = 1
CACHE_FOLDER = ".ssmgraph_cache"
ENV = "SSMGRAPH_CACHE"
CHUNK_CHARS = 1 << 20
"""Documents are encoded in batches of about this many characters (tokenizers works on a batch in parallel)."""
MAX_HEADER = 1 << 16


@dataclass
class TokenStore:
    """The tokens of every document, memory-mapped, with the document boundaries."""

    tokens: np.ndarray
    ends: np.ndarray
    """(documents,) int64: where each document's ids (its eod included) end in ``tokens``."""
    doc_bytes: np.ndarray
    """(documents,) int64: each document's UTF-8 byte count."""
    vocab_size: int
    eod_id: int
    path: Path
    """The header file of the cache."""
    built: bool
    """True when this call tokenized the documents (no cache was found)."""

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], self.ends[:-1]])


def user_cache() -> Path:
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ssmgraph"


def cache_places(root: Path | None) -> list[Path]:
    """Where a cache of the data at ``root`` (None: the bundled corpus) may be, in order of preference."""
    if os.environ.get(ENV) or root is None:
        return [user_cache() / "text"]
    folder = root if root.is_dir() else root.parent
    return [folder / CACHE_FOLDER, user_cache() / "text"]


@dataclass(frozen=True)
class CacheKey:
    key: str
    """sha256 of the files' relative paths, sizes and modification times, and the settings."""
    source: str
    """sha256 of the data root and the settings: a new key of the same source replaces the old cache."""


def cache_key(root: Path, files: list[Path], settings: dict[str, Any]) -> CacheKey:
    base = root if root.is_dir() else root.parent
    stats = []
    for path in files:
        stat = path.stat()
        stats.append([path.relative_to(base).as_posix(), stat.st_size, stat.st_mtime_ns])
    payload = json.dumps({"format": FORMAT, "files": stats, "settings": settings}, sort_keys=True)
    source = json.dumps({"root": str(root.resolve()), "settings": settings}, sort_keys=True)
    return CacheKey(hashlib.sha256(payload.encode()).hexdigest()[:32], hashlib.sha256(source.encode()).hexdigest()[:32])


def load_or_build(
    places: list[Path], key: CacheKey, documents: Callable[[], Iterable[str]], tokenizer: Callable[[], TextTokenizer]
) -> TokenStore:
    """The cache ``key`` from the first place that holds it; else tokenize ``documents()`` with
    ``tokenizer()`` (neither is called on a hit) into the first writable place. Processes that
    start together (torchrun) take turns: the first tokenizes, the others map its cache."""
    for place in places:
        store = _open(place, key.key)
        if store is not None:
            return store
    encoder = tokenizer()
    problem: OSError | None = None
    for place in places:
        try:
            place.mkdir(parents=True, exist_ok=True)
            with _building(place, key.key):
                store = _open(place, key.key) or _build(place, key, documents(), encoder)
            _remove_stale(place, key)
            return store
        except OSError as exc:  # not writable (permissions, a read-only file system, full): the next place
            problem = exc
    assert problem is not None
    raise problem


@contextlib.contextmanager
def _building(place: Path, key: str) -> Iterator[None]:
    """Hold ``place/.text-KEY.lock`` (waiting for another process that holds it)."""
    if fcntl is None:
        yield
        return
    path = place / f".text-{key}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


def _remove_stale(place: Path, key: CacheKey) -> None:
    """Delete the caches of earlier versions of the same data (same root and settings, other files)."""
    for header in place.glob("text-*.json"):
        if header.name == f"text-{key.key}.json":
            continue
        try:
            stale = parse_json(header.read_text(encoding="utf-8")[:MAX_HEADER], max_depth=3).get("source") == key.source
        except (OSError, ValueError, AttributeError, JSONRefused):
            continue
        if stale:
            for part in ("json", "tokens", "docs"):  # the header first: without it the rest is never read
                with contextlib.suppress(OSError):
                    header.with_suffix(f".{part}").unlink()


def _open(place: Path, key: str) -> TokenStore | None:
    header_path = place / f"text-{key}.json"
    try:
        text = header_path.read_text(encoding="utf-8")[:MAX_HEADER]
        header = parse_json(text, max_depth=3)
        dtype = np.dtype(header["dtype"])
        count, documents = int(header["tokens"]), int(header["documents"])
        tokens_path, docs_path = place / f"text-{key}.tokens", place / f"text-{key}.docs"
        if header.get("format") != FORMAT or dtype not in (np.uint16, np.uint32) or count <= 0 or documents <= 0:
            return None
        if tokens_path.stat().st_size != count * dtype.itemsize or docs_path.stat().st_size != documents * 16:
            return None
        docs = np.fromfile(docs_path, dtype=np.int64).reshape(documents, 2)
        tokens = np.memmap(tokens_path, dtype=dtype, mode="r", shape=(count,))
        vocab, eod = int(header["vocab_size"]), int(header["eod"])
    except (OSError, ValueError, KeyError, TypeError, JSONRefused):
        return None  # missing or damaged: tokenize again
    if docs[-1, 0] != count:
        return None
    return TokenStore(tokens, docs[:, 0].copy(), docs[:, 1].copy(), vocab, eod, header_path, built=False)


def _build(place: Path, cache: CacheKey, documents: Iterable[str], tokenizer: TextTokenizer) -> TokenStore:
    key = cache.key
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
    tag = uuid.uuid4().hex[:8]
    names = {part: place / f"text-{key}.{part}" for part in ("tokens", "docs", "json")}
    temps = {part: place / f".text-{key}.{part}.tmp-{tag}" for part in names}
    count, ends, sizes = 0, [], []
    try:
        with open(temps["tokens"], "wb") as out:
            for batch in _batches(documents):
                for document, ids in zip(batch, tokenizer.encode(batch)):
                    out.write(np.append(ids, tokenizer.eod_id).astype(dtype).tobytes())
                    count += ids.size + 1
                    ends.append(count)
                    sizes.append(len(document.encode("utf-8")))
            out.flush()
            os.fsync(out.fileno())
        docs = np.stack([np.asarray(ends, dtype=np.int64), np.asarray(sizes, dtype=np.int64)], axis=1)
        with open(temps["docs"], "wb") as out:
            out.write(docs.tobytes())
            out.flush()
            os.fsync(out.fileno())
        header = {
            "format": FORMAT,
            "dtype": dtype.name,
            "tokens": count,
            "documents": len(ends),
            "bytes": int(sum(sizes)),
            "vocab_size": tokenizer.vocab_size,
            "eod": tokenizer.eod_id,
            "tokenizer": str(tokenizer.source.path or "bytes"),
            "source": cache.source,
        }
        temps["json"].write_text(json.dumps(header, indent=1), encoding="utf-8")
        for part in ("tokens", "docs", "json"):  # the header last: it marks the cache complete
            os.replace(temps[part], names[part])
    finally:
        for temp in temps.values():
            temp.unlink(missing_ok=True)
    tokens = np.memmap(names["tokens"], dtype=dtype, mode="r", shape=(count,))
    return TokenStore(tokens, docs[:, 0], docs[:, 1], tokenizer.vocab_size, tokenizer.eod_id, names["json"], built=True)


def _batches(documents: Iterable[str]) -> Iterable[list[str]]:
    batch: list[str] = []
    size = 0
    for document in documents:
        batch.append(document)
        size += len(document)
        if size >= CHUNK_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
