"""ONNX export: two graphs (text encoder, detector) so prompts stay changeable after export."""
