"""The GPU rows of Table 1 for one FP32 checkpoint, on a machine that has a CUDA GPU but not the
pipeline's tools (DVC, dvclive, pytorch-ood): the same measurement as the bench stage's GPU part,
with its settings (``bench:`` in params.yaml) unless overridden.

    PYTHONPATH=src python scripts/gpu_bench.py CHECKPOINT OUTPUT.json [--int8-onnx FILE]

Without a CUDA GPU every row is written as "not measured: no CUDA GPU on this machine".
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Optional

import torch

from edgeml import params as P
from edgeml.bench import environment as host
from edgeml.bench import gpu as gpu_timing
from edgeml.io import write_json
from edgeml.model.resnet import load_checkpoint


def main(argv: Optional[list[str]] = None) -> None:
    bench = P.load().bench
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="FP32 checkpoint as the train stage writes it (models/fp32.pt)")
    parser.add_argument("output", type=Path, help="JSON file to write")
    parser.add_argument("--int8-onnx", type=Path, help="the onnxruntime backend's QDQ model, for TensorRT INT8")
    parser.add_argument("--warmup", type=int, default=bench.warmup)
    parser.add_argument("--runs", type=int, default=bench.runs)
    parser.add_argument("--batch-size", type=int, default=bench.throughput_batch_size)
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        parser.error(f"checkpoint {args.checkpoint} does not exist")
    model = load_checkpoint(args.checkpoint)
    gpu = gpu_timing.bench_gpu(model, args.int8_onnx, args.warmup, args.runs, args.batch_size)
    table1 = gpu_timing.gpu_table_cells(gpu)
    write_json(
        args.output,
        {
            "checkpoint": {"path": str(args.checkpoint), "sha256": hashlib.sha256(args.checkpoint.read_bytes()).hexdigest()},
            "table1_gpu": table1,
            "gpu_paths": gpu,
            "environment": host.environment(torch.get_num_threads()),
            "settings": {"warmup": args.warmup, "runs": args.runs, "batch_size": args.batch_size},
        },
    )
    print(f"{args.output}: Table 1 GPU cells {table1}")


if __name__ == "__main__":
    main()
