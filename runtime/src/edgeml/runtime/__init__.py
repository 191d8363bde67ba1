"""The edge runtime: torch-free for ONNX artifacts. Imports nothing from the pipeline (tested)."""
