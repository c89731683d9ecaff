"""Durable file writes: write a temporary file beside the target, fsync it, rename it over the target,
fsync the folder; on failure remove the partial file and say what went wrong in one line.

A full disk is the failure users meet: Python reports ENOSPC, and torch.save reports it as
``[enforce fail at inline_container.cc:...] unexpected pos ...`` (its writer swallows the OSError). Both
become ``NoSpaceError("no space left on device while writing <path>")``, and the partial ``.tmp`` is
removed, so a rerun after freeing space is not blocked by the space the partial file holds. A stale
``.tmp`` left by a process killed mid-write is overwritten (the run folder's lock, ``skipkern.runlock``,
makes sure no other process is writing it).
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import IO, Any, Callable, Union

__all__ = ["NoSpaceError", "atomic_write", "append_line", "fsync_dir", "torch_save_atomic"]

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


class NoSpaceError(OSError):
    """The disk (or quota) is full; the message names the file being written."""


def _no_space(path: Path, err: BaseException) -> NoSpaceError:
    out = NoSpaceError(f"no space left on device while writing {path} (the partial file was removed; free some "
                       f"space and rerun)")
    out.errno = errno.ENOSPC
    return out


def fsync_dir(folder: Union[str, os.PathLike]) -> None:
    """fsync a folder, so a rename inside it survives a power loss (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not support fsync on folders; the rename itself is still atomic
    finally:
        os.close(fd)


class _RecordingFile:
    """A binary file whose first OSError is kept: torch.save turns an error of ``write`` into an
    'unexpected pos' RuntimeError, and this lets the caller re-raise the real one."""

    def __init__(self, f: IO[bytes]):
        self.f, self.error = f, None

    def write(self, b: Any) -> int:
        try:
            return self.f.write(b)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.f.flush()


def atomic_write(path: Union[str, os.PathLike], write: Callable[[Any], None], *, binary: bool = False,
                 durable: bool = True) -> Path:
    """Write ``path`` atomically: ``write(f)`` fills ``<path>.tmp``, which then replaces ``path``.

    Args:
        path: the file to publish.
        write: called with the open temporary file (text, or binary when ``binary``).
        durable: fsync the file before the rename and the folder after it (a checkpoint must survive
            a crash of the machine; a metrics table that is rewritten every epoch need not).

    Raises:
        NoSpaceError: the disk is full (the partial file is removed). Other errors propagate after
            the partial file is removed.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"newline": ""})) as f:
            rec = _RecordingFile(f)
            try:
                write(rec if binary else f)
            except RuntimeError as e:  # torch.save: the real error is the recorded OSError
                if rec.error is not None:
                    raise rec.error from e
                raise
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # also KeyboardInterrupt: never leave a partial file behind
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            raise _no_space(path, e) from e
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def append_line(path: Union[str, os.PathLike], line: str) -> None:
    """Append one line (newline added) to a text file; NoSpaceError when the disk is full."""
    path = Path(path)
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError as e:
        if e.errno in _NO_SPACE:
            raise _no_space(path, e) from e
        raise


def torch_save_atomic(obj: Any, path: Union[str, os.PathLike]) -> Path:
    """``torch.save(obj)`` to ``path`` through ``atomic_write`` (fsync before the publishing rename)."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f), binary=True)
