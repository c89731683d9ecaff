"""A run owns its output folder: ``<folder>/.skipkern.lock`` holds the owner's pid and host.

Two runs writing one folder corrupt it (interleaved metrics, a checkpoint renamed under the other's
feet), so every writer of a run folder (``train``, and the ``repro``, ``spectrum`` and ``diagnose``
commands) takes the folder's lock first; a second run gets a one-line ``FolderInUseError`` naming the
folder and the owner.

How. The lock file is held with ``fcntl.flock`` (exclusive, non-blocking); the kernel drops that lock
when the owner exits in any way (an exception, Ctrl-C, SIGKILL), so a lock file whose process is gone
(same host) is stale and is simply taken over. The file's JSON content (pid, host, start time, command)
is what the error message reports. A lock file written by another host is not taken over (its process
cannot be checked from here): the error says to delete it if no run is alive there. ``release``
removes the file, and the folder too when the lock created it and nothing else was written into it,
so a command that fails early leaves no empty output folder behind.

Locks are re-entrant within a process (the CLI takes the folder, then ``train`` takes it again).
Under torch.distributed only rank 0 writes files, so only rank 0 takes locks (callers arrange that).
POSIX only (fcntl).
"""
from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Optional, Union

log = logging.getLogger("skipkern")

__all__ = ["LOCK_NAME", "FolderInUseError", "RunLock", "lock_folder", "read_owner"]

LOCK_NAME = ".skipkern.lock"


class FolderInUseError(RuntimeError):
    """Another live run owns the folder."""


def read_owner(folder: Union[str, os.PathLike]) -> Optional[dict]:
    """The owner record of ``folder``'s lock file (pid, host, started, command), None if there is none
    or it cannot be parsed."""
    try:
        return json.loads((Path(folder) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None


def _describe(owner: Optional[dict]) -> str:
    if not owner:
        return "an owner that has not yet written its pid"
    cmd = " ".join(str(owner.get("command", "")).split())
    cmd = cmd if len(cmd) <= 100 else cmd[:97] + "..."
    return (f"pid {owner.get('pid')} on host {owner.get('host')}, since {owner.get('started')}"
            + (f": {cmd}" if cmd else ""))


def _created_dirs(folder: Path) -> list:
    """The folders ``mkdir(parents=True)`` would create for ``folder``, deepest first."""
    out, p = [], folder
    while not p.exists():
        out.append(p)
        if p.parent == p:
            break
        p = p.parent
    return out


class RunLock:
    """The lock of one folder (see the module docstring); use ``lock_folder`` to get one.

    Args:
        folder: the output folder (created if missing).
        what: the kind of output, for messages ("training run", "spectrum", ...).
    """

    def __init__(self, folder: Union[str, os.PathLike], what: str = "run"):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK_NAME
        self._fd: Optional[int] = None
        self._pid: Optional[int] = None
        self._created: list = []
        self._depth = 0

    @property
    def held(self) -> bool:
        return self._fd is not None and self._pid == os.getpid()

    def acquire(self) -> "RunLock":
        """Take the lock (re-entrant). Raises FolderInUseError if another run holds it, OSError naming
        the folder if it cannot be created or written."""
        if self.held:
            self._depth += 1
            return self
        created = _created_dirs(self.folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = self._open_locked()
        except FolderInUseError:
            raise
        except OSError as e:
            err = OSError(f"cannot write to the output folder {self.folder}: {e.strerror or e}")
            err.errno = e.errno
            raise err from e
        self._fd, self._pid, self._created, self._depth = fd, os.getpid(), created, 1
        return self

    def _open_locked(self) -> int:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                owner = read_owner(self.folder)
                what = (owner or {}).get("what", self.what)
                raise FolderInUseError(f"output folder {self.folder} is in use by another skipkern {what} "
                                       f"({_describe(owner)}); wait for it to finish or choose another output "
                                       f"folder (--out)") from None
            try:  # the owner we waited for may have removed the file just before we locked it
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            try:
                self._check_foreign(fd)
                self._write_owner(fd)
            except BaseException:
                os.close(fd)
                raise
            return fd

    def _check_foreign(self, fd: int) -> None:
        """We hold the kernel lock, so no process on this host owns the folder; an owner recorded by
        another host may still be alive (its lock is invisible from here): refuse then."""
        raw = os.pread(fd, 1 << 16, 0)
        if not raw.strip():
            return
        try:
            owner = json.loads(raw)
        except ValueError:
            owner = None
        if isinstance(owner, dict) and owner.get("host") not in (None, socket.gethostname()):
            what = owner.get("what", self.what)
            raise FolderInUseError(f"output folder {self.folder} is locked by a skipkern {what} on another machine "
                                   f"({_describe(owner)}); if no run is alive there, delete {self.path}")
        log.info("%s: taking over the stale lock of %s (its process is gone)", self.folder, _describe(owner))

    def _write_owner(self, fd: int) -> None:
        owner = {"pid": os.getpid(), "host": socket.gethostname(),
                 "started": datetime.datetime.now().isoformat(timespec="seconds"),
                 "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]) if sys.argv else "", "what": self.what}
        data = json.dumps(owner).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)

    def release(self) -> None:
        """Drop one level of the lock; at the last, remove the lock file (and the folder when the lock
        created it and it is still empty). Only the process that took the lock releases it."""
        if not self.held:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        fd, self._fd = self._fd, None
        try:
            self.path.unlink()
        except OSError:
            pass
        finally:
            os.close(fd)  # after the unlink: a waiting run then sees the file gone and retries
        for d in self._created:  # deepest first; stops at the first folder that holds something
            try:
                d.rmdir()
            except OSError:
                break

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


_LOCKS: dict = {}


def lock_folder(folder: Union[str, os.PathLike], what: str = "run") -> RunLock:
    """The process-wide ``RunLock`` of ``folder`` (not yet acquired): ``with lock_folder(out, "spectrum"):``.
    The same folder gives the same lock object, so nested holders in one process share it."""
    key = os.path.realpath(folder)
    lock = _LOCKS.get(key)
    if lock is None or lock._pid not in (None, os.getpid()):
        lock = _LOCKS[key] = RunLock(folder, what)
    return lock
