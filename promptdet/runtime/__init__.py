"""The inference runtime that needs no torch: the letterbox, NMS, the shared predictor and the ONNX backend."""
