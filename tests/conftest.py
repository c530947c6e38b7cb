"""Shared fixtures."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def save_tiny_checkpoint(tmp_path_factory):
    """save(model=None) -> the path of a promptdet checkpoint of ``model`` (default: a fresh tiny
    detector, 64 px, 16 candidates), as ``promptdet train`` writes one."""

    def save(model=None) -> Path:
        from promptdet.config import ModelConfig
        from promptdet.model.detector import PromptDetector
        from promptdet.train.checkpoint import save_checkpoint

        m = model if model is not None else PromptDetector(ModelConfig(imgsz=64, max_candidates=16))
        return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny",
                               {f"model.{k}": v for k, v in m.state_dict().items()},
                               {"model": dataclasses.asdict(m.cfg), "epoch": 0})

    return save


@pytest.fixture
def assert_recipe_rejected(tmp_path):
    """check(data, message): a line recipe file holding ``data`` fails to load with ``message`` and its path."""

    def check(data, message: str) -> None:
        import yaml

        from promptdet.config import ConfigError
        from promptdet.line.recipe import load_recipe

        path = tmp_path / "line.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(ConfigError) as err:
            load_recipe(path)
        assert message in str(err.value) and str(path) in str(err.value)

    return check
