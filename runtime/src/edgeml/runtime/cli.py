"""`edgeml predict IMAGE_OR_DIR ...`: one JSON line per image from the deployable artifact.

The edge command of the ``edgeml-runtime`` distribution: it runs without torch for ONNX and OpenVINO IR
artifacts (numpy, Pillow and onnxruntime or openvino are enough) and imports nothing from the pipeline.
The full ``edgeml`` package adds ``edgeml review`` to the same command (:mod:`edgeml.cli`).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence

from PIL import Image

from edgeml.runtime.artifact import DECODE_WORKERS, ArtifactError, EdgeModel, list_files
from edgeml.runtime.images import MAX_FILE_MB, MAX_MEGAPIXELS

DEFAULT_ARTIFACT = "models/artifact"


def _number(kind: Callable[[str], float], minimum: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value

    return parse


def add_parser(commands: argparse._SubParsersAction) -> None:
    """``edgeml predict``'s arguments, on the command's subparsers."""
    predict = commands.add_parser(
        "predict",
        help="classify images and flag out-of-distribution ones",
        description="Prints one JSON line per file: file, class, confidence, ood_score, in_distribution; "
        "or file and error for a file that is not a usable image. Exit code 1 if any file failed.",
    )
    predict.add_argument("paths", nargs="+", help="image files and/or folders (searched recursively)")
    predict.add_argument("--artifact", default=DEFAULT_ARTIFACT, help=f"artifact file, or the folder holding one (default: {DEFAULT_ARTIFACT})")
    predict.add_argument("--sha256", help="expected sha256 of the artifact (default: read from ARTIFACT.sha256)")
    predict.add_argument("--batch-size", type=_number(int, 1), default=64, help="images per forward pass (default: 64)")
    predict.add_argument("--threads", type=_number(int, 1), help="CPU threads of the model (default: all cores)")
    predict.add_argument(
        "--workers", type=_number(int, 0), default=DECODE_WORKERS,
        help=f"threads decoding the next batches while the model runs; 0 decodes in turn (default: {DECODE_WORKERS})",
    )
    predict.add_argument(
        "--max-file-mb", type=_number(float, 0), default=MAX_FILE_MB,
        help=f"refuse larger files before reading them (default: {MAX_FILE_MB:g})",
    )
    predict.add_argument(
        "--max-megapixels", type=_number(float, 0), default=MAX_MEGAPIXELS,
        help=f"refuse larger images before decoding them (default: {MAX_MEGAPIXELS:g})",
    )


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="edgeml", description=__doc__)
    add_parser(root.add_subparsers(dest="command", required=True))
    return root


def main(argv: Sequence[str] | None = None) -> int:
    return run_predict(parser().parse_args(argv))


def run_predict(args: argparse.Namespace) -> int:
    """Exit code 0: every file classified; 1: some files were not usable images; 2: no usable artifact."""
    try:
        model = EdgeModel.load(args.artifact, args.sha256, args.threads)
    except ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    records = model.predict(list_files(args.paths), args.batch_size, args.workers, args.max_file_mb, args.max_megapixels)
    with warnings.catch_warnings():
        # Pillow only warns between its pixel limit and twice it: here that is an error record like any other.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for i, record in enumerate(records, 1):
            failed += "error" in record
            # a batch's records come out together: one write per batch keeps each as prompt as one per line
            print(json.dumps(record), flush=i % args.batch_size == 0)
    sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
