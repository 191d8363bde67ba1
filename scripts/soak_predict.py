"""Soak `edgeml predict` on a folder of many mixed files, outside the pipeline: to compare the code
before and after a change in the same run (the bench stage soaks the committed artifact itself).

    python scripts/soak_predict.py --artifact models/artifact --files 20000 [--workers 0] [--pythonpath OTHER/src]

Writes (once, reused after) ``--files`` files as :data:`edgeml.bench.loadtest.MIX` says, runs the command in
its own process and prints :func:`edgeml.bench.loadtest.soak`'s figures as one JSON line. ``--pythonpath``
runs the command from another source tree, e.g. ``git archive HEAD src | tar -x -C /tmp/base``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgeml.bench.loadtest import soak, write_mixed_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--folder", type=Path, help="where the files are written (default: /tmp/edgeml-soak-N)")
    parser.add_argument("--workers", type=int, help="the command's --workers (default: its own default)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--pythonpath", type=Path, help="run the command from this source tree")
    args = parser.parse_args()
    folder = args.folder or Path(f"/tmp/edgeml-soak-{args.files}")
    if not folder.exists():
        write_mixed_files(folder, args.files)
    print(json.dumps(soak(args.artifact, folder, args.batch_size, args.workers, args.threads, args.pythonpath)))


if __name__ == "__main__":
    main()
