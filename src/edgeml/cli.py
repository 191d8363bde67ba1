"""`edgeml predict IMAGE_OR_DIR ...`: one JSON line per image from the deployable artifact."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import torch

from edgeml.deploy import ArtifactError, EdgeModel, list_files

DEFAULT_ARTIFACT = "models/artifact"


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="edgeml", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    predict = commands.add_parser(
        "predict",
        help="classify images and flag out-of-distribution ones",
        description="Prints one JSON line per file: file, class, confidence, ood_score, in_distribution; "
        "or file and error for a file that is not a usable image. Exit code 1 if any file failed.",
    )
    predict.add_argument("paths", nargs="+", help="image files and/or folders (searched recursively)")
    predict.add_argument("--artifact", default=DEFAULT_ARTIFACT, help=f"artifact file, or the folder holding one (default: {DEFAULT_ARTIFACT})")
    predict.add_argument("--sha256", help="expected sha256 of the artifact (default: read from ARTIFACT.sha256)")
    predict.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    predict.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads (default: all)")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.batch_size < 1 or args.threads < 1:
        print("error: --batch-size and --threads must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        model = EdgeModel.load(args.artifact, args.sha256)
    except ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for record in model.predict(list_files(args.paths), args.batch_size):
        failed += "error" in record
        print(json.dumps(record), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
