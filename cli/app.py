"""The CLI's entry: reads the arguments, runs one command, turns every error into one line and an exit status."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from ..flux2.errors import Cancelled, Flux2Error
from . import batch, benchmark, demo, interrupts, models, run, serve
from .common import err

COMMANDS = (run, batch, demo, models, serve, benchmark)     # in the order --help lists them


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (exit status 2), like every other error of the CLI."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="comfyui-flux2", description="FLUX.2 workflows without a ComfyUI server.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log HTTP calls (never keys)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The CLI. `argv=None` means this is the process's entry point (console script, python -m)."""
    try:
        code = _main(argv)
    except KeyboardInterrupt:          # e.g. Ctrl-C while the pack is still loading
        err("interrupted")
        code = 130
    if argv is None and interrupts.abandoned.is_set():
        # Worker threads of an aborted run still wait on the network; exiting normally would join them.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "takes_rest", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return args.handler(args)
    except Cancelled as exc:
        err(str(exc))
        return 130
    except KeyboardInterrupt:
        err("aborted")
        return 130
    except Flux2Error as exc:
        err(str(exc))
        return 1
