"""Stage quantize: the INT8 model by the params' recipe; the FP32 model in every deployable format the bench compares."""

import dataclasses

from edgeml import params as P
from edgeml import paths
from edgeml.data.splits import load_arrays
from edgeml.io import atomic_dir, write_json
from edgeml.model.resnet import load_checkpoint
from edgeml.quantization import export_fp32, int8_path, make_quantizer, quantize
from edgeml.stage import run


def main() -> None:
    params = P.load().quantize
    quantizer = make_quantizer(params)  # a bad recipe stops here, before any work
    arrays = load_arrays(paths.CIFAR10)
    fp32 = load_checkpoint(paths.FP32)
    with atomic_dir(paths.DEPLOY) as out:
        export_fp32(fp32, out)
        quantize(quantizer, fp32, arrays, int8_path(params.backend, out))
    write_json(paths.metrics("quantize"), {"recipe": dataclasses.asdict(quantizer.params)})  # auto resolved


if __name__ == "__main__":
    run(main)
