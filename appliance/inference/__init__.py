"""Inference: model contracts, backends (ONNX Runtime embedded, Triton in production), pipelines."""
