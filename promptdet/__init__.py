"""promptdet: an instruction-tuned promptable object detector.

    import promptdet
    model = promptdet.load("runs/train/best.safetensors")
    model.train(data="datasets/inspection.yaml", epochs=50, imgsz=640)
    model.val(data="datasets/inspection.yaml", split="test")
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def load(source=None):
    """A model from a checkpoint, a model YAML or scale name, or (no argument) the bundled model.

    Imports torch lazily, so ``import promptdet`` stays light.
    """
    from promptdet.api import load as _load

    return _load(source)
