"""Stage report: Tables 1 and 2 (markdown and JSON), the headline metrics (quality and timing apart),
and the plots (edgeml.reporting.report)."""

from edgeml import params as P
from edgeml import paths
from edgeml.io import read_json
from edgeml.reporting.report import INPUTS, write_report
from edgeml.stage import run


def main() -> None:
    params = P.load()
    metrics = {name: read_json(paths.metrics(name)) for name in INPUTS}
    write_report(params, metrics, paths.METRICS, paths.scores, paths.PLOTS)


if __name__ == "__main__":
    run(main)
