"""Shared fixtures."""

from __future__ import annotations

import dataclasses
import importlib
import os
from pathlib import Path

import pytest

# Under CI=true a skip is a failure. CI installs everything the suite needs (the dev extra, and
# mosquitto from Debian), so a skip there is a test that silently did not run: a missing broker,
# OPC UA or Modbus server would otherwise leave a green run with "1 skipped" in it.
IN_CI = os.environ.get("CI", "").lower() == "true"


def require_module(name: str, install: str):
    """Import ``name`` for a test that talks to a real server (asyncua, pymodbus, paho-mqtt).
    Without it the test skips, naming ``install``; under CI=true it fails instead."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"{name} is not installed", install)


def missing(what: str, install: str) -> None:
    """A server or client a test needs is not here: skip on a developer's machine, fail under CI=true."""
    message = f"{what} ({install})"
    if IN_CI:
        pytest.fail(f"{message}: CI=true, where every real-server test must run", pytrace=False)
    pytest.skip(message)


def _skip_reason(report) -> str:
    return report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true, every skip (a fixture's or the test's own) fails the test, with its reason."""
    report = (yield).get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where every test must run: {_skip_reason(report)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a whole module skipped at import (a module-level importorskip)."""
    report = (yield).get_result()
    if IN_CI and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where every test must run: {_skip_reason(report)}"


def settle_tiny_detector(m):
    """A fresh tiny detector with distinct scores, in eval mode (returned).

    Untrained, the features fade to ~1e-6 through the trunk, every anchor scores the same and
    which of the tied peaks a top-k keeps is arbitrary. BatchNorm statistics from a few images
    (as the first training steps would give), a trained model's similarity scale and boxes a few
    strides wide make a model whose ONNX parity compares real boxes.
    """
    import torch

    for bn in m.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.reset_running_stats()
            bn.momentum = None  # a plain average over the calibration batches
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.rand(4, 3, 64, 64), torch.randn(1, 1, 384), torch.randn(1, 1, 3, 384),
              torch.ones(1, 1, 3, dtype=torch.bool))
    m.eval()
    m.similarity.logit_scale.data.fill_(4.6)
    for seq in m.head.box:
        seq[-1].weight.data *= 0.01
    return m


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
