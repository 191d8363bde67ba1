"""metrics/gpu_recipe/report.md from the files the GPU session brought back (scripts/gpu_run.sh):
training time per epoch and accuracy of each recipe, and the GPU rows of Table 1. Every number is
read from those files.

    python scripts/gpu_report.py
"""

from __future__ import annotations

import json
from pathlib import Path

FOLDER = Path(__file__).resolve().parents[1] / "metrics" / "gpu_recipe"


def main() -> None:
    summary = json.loads((FOLDER / "summary.json").read_text())
    bench = json.loads((FOLDER / "gpu_bench.json").read_text())
    settings, env = summary["settings"], summary["environment"]
    lines = [
        f"#### GPU training ({env['gpu']}, torch {env['torch']}): CIFAR-stem ResNet18, {settings['EPOCHS']} epochs, "
        f"batch {settings['BATCH']}, peak lr {settings['LR']}",
        "",
        "| recipe | median s/epoch (45,000 images) | total train s | val top-1 (%) | test top-1 (%) |",
        "|---|---|---|---|---|",
    ]
    for name, r in summary["recipes"].items():
        label = f"LogitNorm (tau {settings['TAU']})" if name == "logitnorm" else "cross-entropy"
        lines.append(
            f"| {label} | {r['median_epoch_seconds']:.3f} | {r['train_seconds']:.1f} | {100 * r['val_acc']:.2f} "
            f"| {100 * r['test_top1']:.2f} |"
        )
    gpu = bench["gpu_paths"]
    size = bench["settings"]["batch_size"]
    lines += [
        "",
        "Chosen on validation top-1 (test top-1 recorded, never compared). The first epoch also tunes cuDNN, "
        "hence the median.",
        "",
        f"#### Table 1, GPU rows ({bench['environment']['gpu']}, CUDA {bench['environment']['cuda']}, CUDA events, "
        f"median of {bench['settings']['runs']} runs)",
        "",
        f"| path | batch 1 (ms) | batch {size} (ms per batch) |",
        "|---|---|---|",
    ]
    for name, row in gpu.items():
        if isinstance(row, dict):
            lines.append(f"| {name} | {row['batch1_ms']:.3f} | {row[f'batch{size}_ms']:.3f} |")
        else:
            lines.append(f"| {name} | {row} | |")
    tf32 = bench["environment"].get("fp32_convolutions_allow_tf32")
    lines += ["", f"FP32 convolutions {'on TF32 tensor cores (PyTorch default)' if tf32 else 'in full FP32'}. "
              f"Table 1's FP32 GPU cell is the fastest FP32 path at batch 1: {bench['table1_gpu']['fp32']['path']}."]
    (FOLDER / "report.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
