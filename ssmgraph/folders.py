"""Output folders: one writer at a time, replaced whole, never a folder that is read.

Every command that writes a folder (``train``, ``--resume``, ``merge``, ``build --out``,
``import``/``export hf``, :func:`ssmgraph.save`) holds a **lock** on it: a file
``.NAME.lock`` beside the folder, locked with ``flock`` (the kernel drops it when the holder
dies, so a killed run never leaves a lock behind) and holding the holder's pid, host and
command for the message a second writer gets. Where ``flock`` is missing, an exclusively
created lock file whose pid is checked for life on the same host does the same job.

A folder is **replaced atomically**: written into a hidden sibling ``.NAME.tmp-XXXXXXXX`` and
exchanged with the old one in one ``renameat2(RENAME_EXCHANGE)`` where the OS has it (Linux),
so no moment exists at which ``NAME`` is missing. Elsewhere the old folder is first renamed to
``.NAME.old-XXXXXXXX``; a kill between the two renames is repaired by the next write (or
resume), which renames that copy back. Leftover temporary folders are removed then too.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ssmgraph.errors import SsmgraphError

try:
    import fcntl
except ImportError:  # Windows: the exclusive-create fallback below
    fcntl = None  # type: ignore[assignment]

RUN_FILE = "run.json"
CHECKPOINTS = "checkpoints"
LATEST = "LATEST"
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old|del)-[0-9a-f]{8}$")


class CheckpointError(SsmgraphError):
    """A model or run folder that cannot be read or written; the message says why and what to do."""

    code = "E400"


class FolderBusyError(SsmgraphError):
    """Another process is writing the folder (it holds the folder's lock)."""

    code = "E410"


# ---- paths ------------------------------------------------------------------------------------------
def follow_link(path: Path) -> Path:
    """A symlinked folder is written where it points (the link itself stays as it is)."""
    return path.resolve() if path.is_symlink() else path


def under_a_file(path: Path) -> bool:
    """Whether a folder above ``path`` is in fact a file (so nothing can be written there)."""
    return any(parent.exists() and not parent.is_dir() for parent in path.parents)


def holds_current_folder(path: Path) -> bool:
    """Whether replacing ``path`` would pull the working directory from under the process."""
    return path.resolve() == Path.cwd() or path.resolve() in Path.cwd().parents


def overlaps(a: Path, b: Path) -> bool:
    """Whether one of two paths is the other or lies inside it (after resolving links)."""
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def run_of_checkpoint(path: Path) -> Path | None:
    """The training run whose ``checkpoints/`` folder holds ``path`` (or is it), if any."""
    for folder in (path.resolve(), *path.resolve().parents):
        if folder.name == CHECKPOINTS and (folder.parent / RUN_FILE).is_file():
            return folder.parent
    return None


def refuse_checkpoint_target(path: Path, what: str = "the output") -> None:
    """A run's checkpoints belong to its trainer: no other command writes there."""
    run = run_of_checkpoint(path)
    if run is not None:
        raise CheckpointError(
            f"{path}: {what} would replace a checkpoint of the training run {run} (its optimizer and trainer state with it); "
            f"write to a folder outside {run / CHECKPOINTS}"
        )


def refuse_sources(path: Path, sources: Iterable[Path], what: str = "the output") -> None:
    """The output may not be, hold or lie inside a folder that the command reads."""
    for source in sources:
        if overlaps(path, source):
            raise CheckpointError(f"{path}: {what} would replace {source}, which this command reads; choose another folder")


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """A run's checkpoint folders, oldest first."""
    folder = run_dir / CHECKPOINTS
    return sorted(p for p in folder.glob("step_*") if p.is_dir()) if folder.is_dir() else []


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``LATEST`` names; the newest one if that is missing."""
    pointer = run_dir / CHECKPOINTS / LATEST
    if pointer.is_file():
        with open(pointer, encoding="utf-8", errors="replace") as handle:
            name = handle.read(256).strip()  # a checkpoint's name; a longer (tampered) pointer names nothing
        candidate = run_dir / CHECKPOINTS / name
        if candidate.is_dir() and candidate.parent == run_dir / CHECKPOINTS:
            return candidate
    found = checkpoint_dirs(run_dir)
    return found[-1] if found else None


# ---- locks ------------------------------------------------------------------------------------------
_held: dict[Path, tuple[int, int]] = {}  # resolved folder -> (lock file descriptor, depth)


def lock_file(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.lock"


def _key(folder: Path) -> Path:
    return folder.resolve()


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock for the block (re-entrant within a process).

    A second process gets :class:`FolderBusyError` naming the holder."""
    if under_a_file(Path(folder)):
        raise CheckpointError(f"{folder} lies under a file, not a directory; choose another path")
    key = _key(Path(folder))
    if key in _held:
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _held[key]
            _held[key] = (fd, depth - 1)
        return
    key.parent.mkdir(parents=True, exist_ok=True)
    path = lock_file(key)
    fd = _acquire(path, key)
    _held[key] = (fd, 1)
    try:
        yield
    finally:
        del _held[key]
        _release(path, fd)


def _record() -> str:
    command = " ".join(Path(sys.argv[0]).name if i == 0 else arg for i, arg in enumerate(sys.argv))[:200]
    return json.dumps(
        {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    )


def _acquire(path: Path, folder: Path) -> int:
    if fcntl is None:
        return _acquire_exclusive(path, folder)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise _busy(path, folder) from None
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):  # a file system without flock
                return _acquire_exclusive(path, folder)
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file its last holder unlinked while we waited for it
            os.ftruncate(fd, 0)
            os.write(fd, _record().encode())
            return fd
        os.close(fd)


def _acquire_exclusive(path: Path, folder: Path) -> int:
    """Lock by creating the file exclusively; a record left by a dead process on this host is stale."""
    for _ in range(2):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder.get("host") == socket.gethostname() and not _alive(holder.get("pid")):
                path.unlink(missing_ok=True)
                continue
            raise _busy(path, folder) from None
        os.write(fd, _record().encode())
        return fd
    raise _busy(path, folder)


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _release(path: Path, fd: int) -> None:
    try:
        path.unlink(missing_ok=True)  # while still locked: a waiter that opened it sees the inode change
    finally:
        os.close(fd)


def _holder(path: Path) -> dict[str, object]:
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.loads(handle.read(4096))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _busy(path: Path, folder: Path) -> FolderBusyError:
    holder = _holder(path)
    who = (
        f"`{holder['command']}` (pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')})"
        if holder.get("command")
        else "another process"
    )
    return FolderBusyError(
        f"{folder} is being written by {who}; wait until it finishes, or choose another folder. "
        f"If no such process runs any more, delete {path}"
    )


# ---- atomic replacement -----------------------------------------------------------------------------
@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``target`` when the block succeeds.

    The swap never leaves ``target`` missing (see the module docstring); the target's lock is
    held throughout, and an earlier interrupted write of the same target is repaired first."""
    target = follow_link(Path(target))
    if holds_current_folder(target):
        raise CheckpointError(f"{target} is the current folder (or holds it); write to a new folder")
    if under_a_file(target):
        raise CheckpointError(f"{target} lies under a file, not a directory; choose another path")
    target.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(target):
        repair(target.parent, only=target.name)
        tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            yield tmp
            for path in tmp.rglob("*"):
                _fsync(path)
            _swap_into_place(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def repair(parent: Path, *, only: str | None = None) -> None:
    """Finish what a killed write left in ``parent``: restore a folder whose swap stopped between
    its two renames (from ``.NAME.old-*``), and delete temporary, superseded and half-deleted copies.

    Call it only while holding the lock of the folders it repairs (``only``: one name)."""
    if not parent.is_dir():
        return
    leftovers: dict[str, list[tuple[str, Path]]] = {}
    for path in parent.iterdir():
        match = _LEFTOVER.match(path.name)
        if match and (only is None or match["name"] == only):
            leftovers.setdefault(match["name"], []).append((match["kind"], path))
    for name, found in leftovers.items():
        target = parent / name
        olds = sorted((p for kind, p in found if kind == "old"), key=lambda p: p.stat().st_mtime)
        if olds and not (target.exists() or target.is_symlink()):
            os.replace(olds.pop(), target)
        for _, path in found:
            if path.exists() and path != target:
                _remove(path)


def _swap_into_place(tmp: Path, target: Path) -> None:
    if not (target.exists() or target.is_symlink()):
        os.replace(tmp, target)
    elif _exchange(tmp, target):
        _remove(tmp)  # now the old content
    else:
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
        os.replace(tmp, target)
        _remove(old)
    _fsync_dir(target.parent)


def _renameat2() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except OSError:
        return None


_RENAMEAT2 = _renameat2()
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2``); False where the OS or file system cannot."""
    if _RENAMEAT2 is None:
        return False
    status = _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)  # type: ignore[operator]
    if status == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def remove_tree(path: Path) -> None:
    """Delete a folder so that a kill midway leaves it whole or gone: renamed aside first
    (``.NAME.del-*``, which :func:`repair` deletes), then removed."""
    aside = path.parent / f".{path.name}.del-{uuid.uuid4().hex[:8]}"
    os.replace(path, aside)
    shutil.rmtree(aside)


def _remove(path: Path) -> None:
    """Delete a file or a directory tree (a file is not a tree: rmtree would leave it behind)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        os.remove(path)


def _fsync(path: Path) -> None:
    if path.is_file():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not possible on every OS
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small text file so that a kill leaves the old content or the new, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def readable_by_others(path: Path) -> None:
    """Give a file the mode its JSON neighbours get (safetensors writes 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
