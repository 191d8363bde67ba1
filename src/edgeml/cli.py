"""`edgeml`: the edge command (`edgeml predict`, from the edgeml-runtime distribution) plus the commands that
need the full package: `edgeml review`, which compares a pipeline run with a git revision, and `edgeml
backends`, which lists every quantization backend and what it offers here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from edgeml.reporting import review
from edgeml.runtime import cli as runtime_cli


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="edgeml", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    runtime_cli.add_parser(commands)
    review.add_parser(commands)
    backends = commands.add_parser("backends", help="every quantization backend: its options, file, runtime, and what works here")
    backends.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "backends":  # imported here: torch comes with it, and `edgeml predict` must run without
        from edgeml.quantization import catalog

        return catalog.run(args)
    return review.run(args) if args.command == "review" else runtime_cli.run_predict(args)


if __name__ == "__main__":
    sys.exit(main())
