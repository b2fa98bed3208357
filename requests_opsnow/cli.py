"""The ``opsnow`` command line (also ``python -m requests_opsnow``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="opsnow", description="Call the OpsNow API with automatic token handling."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser(
        "demo",
        help="walk through token handling against an embedded fake server (no key needed)",
        description="Start a fake OpsNow server on loopback and show fetch, reuse, early"
        " refresh and 401 -> refresh -> replay, with token request counts.",
        epilog="example: opsnow demo",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(sys.stdout)
    return 2  # pragma: no cover - argparse rejects unknown commands first
