"""Parse, set up, run one command, and turn any failure into one line on stderr (``--debug``: the
traceback). Imported by ``skipkern.cli.main`` inside its Ctrl-C guard: everything heavy starts here."""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from skipkern.cli.common import EXIT_ERROR, CLIError, one_line, setup
from skipkern.cli.diagnose import cmd_diagnose
from skipkern.cli.dist import leave_group, rank_tag
from skipkern.cli.parser import build_parser
from skipkern.cli.repro import cmd_repro
from skipkern.cli.spectrum import cmd_spectrum
from skipkern.cli.tools import cmd_backends, cmd_bench
from skipkern.cli.train import cmd_train

__all__ = ["run", "COMMANDS"]

COMMANDS = {"repro": cmd_repro, "train": cmd_train, "spectrum": cmd_spectrum, "diagnose": cmd_diagnose,
            "backends": cmd_backends, "bench": cmd_bench}
# errors whose message is written for the user; anything else is reported as unexpected
_USER_ERRORS = (CLIError, ValueError, TypeError, OSError, RuntimeError, ImportError, KeyError)


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line ``argv`` (default sys.argv[1:]); returns the exit status. KeyboardInterrupt
    propagates (``main`` reports it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        setup(args)
        return COMMANDS[args.command](args)
    except Exception as e:
        if getattr(args, "debug", False):
            raise
        if isinstance(e, _USER_ERRORS) and str(e):
            msg = str(e)
        else:
            msg = f"{type(e).__name__}: {e} (unexpected; rerun with --debug for the traceback)"
        print(f"skipkern: error{rank_tag()}: {one_line(msg)}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        leave_group()
