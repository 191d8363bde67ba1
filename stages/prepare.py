"""Stage prepare: decode archives to uint8 arrays, split validation off train, locate OpenOOD's
ID split in the test set, build OOD sets (edgeml.data.prepare)."""

from edgeml import params as P
from edgeml import paths
from edgeml.data.prepare import prepare
from edgeml.io import atomic_dir, read_json, write_json
from edgeml.stage import run


def main() -> None:
    params = P.load()
    sources = read_json(paths.SOURCES)
    with atomic_dir(paths.PREPARED) as out:
        counts = prepare(params.prepare, [name for _, name in params.ood.validation_sets.items()], sources, out)
    write_json(paths.metrics("prepare"), {"samples": counts})


if __name__ == "__main__":
    run(main)
