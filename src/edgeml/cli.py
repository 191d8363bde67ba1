"""`edgeml`: the edge command (`edgeml predict`, from the edgeml-runtime distribution) plus the commands that
need the full package: `edgeml review`, which compares a pipeline run with a git revision, and `edgeml
backends`, which lists every quantization backend and what it offers here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from edgeml.quantization import catalog
from edgeml.reporting import review
from edgeml.runtime import cli as runtime_cli


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="edgeml", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    runtime_cli.add_parser(commands)
    review.add_parser(commands)
    catalog.add_parser(commands)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    commands = {"review": review.run, "backends": catalog.run}
    return commands.get(args.command, runtime_cli.run_predict)(args)


if __name__ == "__main__":
    sys.exit(main())
