"""Stage fetch: copy or download each dataset archive (the first of its sources that is there),
verify its checksum, record the source used and any that failed before it."""

import dataclasses
from pathlib import Path

from edgeml import params as P
from edgeml import paths
from edgeml.data.sources import fetch
from edgeml.io import atomic_dir, write_json
from edgeml.stage import run


def main() -> None:
    params = P.load().fetch
    with atomic_dir(paths.RAW) as tmp:
        records = [fetch(name, source, tmp, retries=params.retries) for name, source in params.sources().items()]
    # Record where each file ends up after the folder is moved into place.
    write_json(
        paths.SOURCES,
        {r.name: dataclasses.asdict(r) | {"path": (paths.RAW / r.name / Path(r.path).name).as_posix()} for r in records},
    )


if __name__ == "__main__":
    run(main)
