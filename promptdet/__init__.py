"""promptdet: an instruction-tuned promptable object detector."""

__version__ = "0.1.0"

__all__ = ["__version__"]
