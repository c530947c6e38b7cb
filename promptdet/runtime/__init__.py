"""The inference runtime that needs no torch: preprocessing now, the ONNX predictor later (issue #5)."""
