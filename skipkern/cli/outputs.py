"""Output folders of the commands: each command owns its folder while it runs (``skipkern.runlock``;
under torchrun rank 0 holds the lock), never overwrites an earlier result silently, and leaves no empty
folder behind when it fails."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

from skipkern.cli.common import CLIError

__all__ = ["hold_output", "beside_checkpoint"]


@contextmanager
def hold_output(path, what: str, *, results: Sequence[str] = (), force: bool = False,
                group: Optional[object] = "default") -> Iterator[Path]:
    """Own the output folder ``path`` for the duration of the block.

    Args:
        what: the kind of output ("training run", "spectrum", ...), for messages.
        results: file names of an earlier result of this command; if any exists, refuse unless ``force``.
        group: "default" (rank 0 of the torchrun group holds the lock; an error there, such as another
            run owning the folder or an unwritable folder, is raised on every rank) or None (this
            process alone, e.g. a command that runs on rank 0 only).
    """
    from skipkern import distributed as sd
    from skipkern.runlock import lock_folder

    group = sd.resolve_group(group)
    path = Path(path)
    lock = lock_folder(path, what) if sd.rank(group) == 0 else None

    def take() -> None:
        lock.acquire()
        earlier = [n for n in results if (path / n).exists()]
        if earlier and not force:
            lock.release()
            raise CLIError(f"output folder {path} already holds a {what} ({', '.join(earlier)}); pass --force to "
                           f"overwrite it, or --out to write elsewhere")

    sd.run_on_main(take, group)
    try:
        yield path
    finally:
        if lock is not None:
            lock.release()


def beside_checkpoint(args, name: str) -> Path:
    """--out, or by default ``<run folder>/<name>``: the result stays with the run it describes."""
    if args.out is not None:
        return Path(args.out)
    p = Path(args.checkpoint)
    return (p if p.is_dir() else p.parent) / name
