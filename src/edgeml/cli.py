"""`edgeml`: the edge command (`edgeml predict`, from the edgeml-runtime distribution) plus `edgeml review`,
which compares a pipeline run with a git revision and needs the full package."""

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
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return review.run(args) if args.command == "review" else runtime_cli.run_predict(args)


if __name__ == "__main__":
    sys.exit(main())
