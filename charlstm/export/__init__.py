"""Exporters: a trained model as files other programs run (ONNX) or any browser runs (one HTML page)."""
