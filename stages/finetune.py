"""Stage finetune: the model that says "I don't know", as models/fp32.pt. Either the published fine-tuned
weights that finetune.weights names (verified, with the record of the run that made them), or the
train stage's model fine-tuned here on the CPU with outliers made in code: a recipe search on short
runs, the choice on validation data, the chosen recipe in full (resumable after a kill)."""

from edgeml import params as P
from edgeml import paths
from edgeml.data.splits import load_arrays
from edgeml.finetuning import finetune_model, install, search_table
from edgeml.io import read_json, write_json, write_text
from edgeml.ood.detectors import check_params
from edgeml.stage import run


def main() -> None:
    params = P.load()
    if params.finetune.weights is not None:
        record = install(params, paths.PRETRAINED, paths.FP32, paths.FINETUNE_RECORD)
    else:
        check_params(params.ood.detectors, params.ood.search)
        raw_cifar = read_json(paths.SOURCES)["cifar10"]["path"]
        record = finetune_model(params, load_arrays(paths.CIFAR10), paths.PRETRAINED, raw_cifar, paths.PREPARED,
                                paths.FP32, paths.FINETUNE_WORK)
    write_json(paths.metrics("finetune"), record)
    write_text(paths.METRICS / "finetune_search.md", search_table(record))


if __name__ == "__main__":
    run(main)
