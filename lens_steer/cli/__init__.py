"""The ``lens-steer`` command line: parse arguments into the library's settings and call it; ``main(argv=None)``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from lens_steer.cli import interop_commands, reproduce_command, run_commands, serve_command, vector_commands

COMMANDS = (vector_commands.COMMANDS + run_commands.COMMANDS + reproduce_command.COMMANDS
            + interop_commands.COMMANDS + serve_command.COMMANDS)
"""``(name, help, add_arguments, run)`` per subcommand."""

__all__ = ["COMMANDS", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="lens-steer", description="Chain-of-thought steering vectors with TransformerLens.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text, add_args, run in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (errors in inputs print one line and return 2)."""
    from lens_steer.compat import UnsupportedVersion
    from lens_steer.method.vectors import ModelMismatchError, VectorFileError
    from lens_steer.models import ModelLoadError
    from lens_steer.storage import LockedError, StorageError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return int(args.run(args) or 0)
    except (ModelLoadError, VectorFileError, ModelMismatchError, FileNotFoundError, IndexError, KeyError, ValueError,
            StorageError, LockedError, UnsupportedVersion) as exc:
        print(f"lens-steer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # stdout closed early (`lens-steer info V | head -1`): quiet, as other tools are
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # a file named on the command line that cannot be read or written (no permission, ...)
        if exc.filename is None:
            raise
        print(f"lens-steer {args.command}: error: {_file_error(exc)}", file=sys.stderr)
        return 2


def _file_error(exc: OSError) -> str:
    """``PATH: reason`` for an ``OSError`` about a file (both paths of a rename)."""
    where = str(exc.filename) + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
    return f"{where}: {exc.strerror or exc}"
