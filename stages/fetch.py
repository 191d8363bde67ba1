"""Stage fetch: copy or download each dataset archive, verify its checksum, record the source."""

import dataclasses
from pathlib import Path

from edgeml import params as P
from edgeml.fetch import fetch
from edgeml.io import clear_dir, write_json
from edgeml.stage import run

RAW = Path("data/raw")


def main() -> None:
    params = P.load().fetch
    clear_dir(RAW)
    records = [fetch(name, source, RAW, retries=params.retries) for name, source in params.sources().items()]
    write_json("data/sources.json", {r.name: dataclasses.asdict(r) for r in records})


if __name__ == "__main__":
    run(main)
