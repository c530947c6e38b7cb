"""Line recipe YAML: the example loads, and every mistake names the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from promptdet.config import ConfigError
from promptdet.line.recipe import load_recipe, recipe_from_dict

REPO = Path(__file__).resolve().parents[1]
MINIMAL = {"version": 1, "source": {"uri": "line.mp4"},
           "checks": [{"name": "missing_cap", "prompt": "bottles with a missing cap", "fail_if": "count >= 1"}]}


def test_example_recipe_loads():
    recipe = load_recipe(REPO / "configs/line.example.yaml")
    assert [c.name for c in recipe.checks] == ["defective_parts", "missing_cap", "surface_damage"]
    assert recipe.prompts[0] == "find the defective parts"
    assert recipe.deadline_ms == 500.0 and recipe.source.uri == "line.mp4" and recipe.source.trigger == "every-frame"
    assert recipe.sinks.jsonl.path.startswith("runs/line/") and recipe.sinks.sqlite.path.startswith("runs/line/")
    assert recipe.checks[2].rule.fails(1, 0.8) and not recipe.checks[2].rule.fails(0, 0.0)
    assert recipe.checks[2].roi == [2, 0, 638, 480] and recipe.checks[2].conf == 0.35
    assert all(c.roi_mode == "inside" for c in recipe.checks)
    assert recipe.model.sizes == [640, 768]  # two sizes, merged (README, "The inspection line")
    assert recipe.stats.port is None  # the HTTP endpoint stays off unless asked for


def test_minimal_recipe_gets_defaults():
    recipe = recipe_from_dict(MINIMAL)
    assert recipe.model.backend == "auto" and recipe.model.weights is None and recipe.model.conf == 0.25
    assert recipe.source.reconnect.max_s == 30.0 and recipe.sinks.jsonl is None
    camera = recipe_from_dict({**MINIMAL, "source": {"uri": 0, "kind": "camera", "reconnect": None}})
    assert camera.source.uri == 0 and camera.source.reconnect.initial_s == 1.0


def _with(path: str, value):
    """MINIMAL with the dotted ``path`` set to ``value`` (list items as [i])."""
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
    node[int(last) if last.isdigit() else last] = value
    return data


@pytest.mark.parametrize("data, message", [
    (_with("modle", {}), "unknown key 'modle' (did you mean 'model'?)"),
    (_with("model.backed", "onnx"), "model: unknown key 'backed' (did you mean 'backend'?)"),
    (_with("checks.0.fail", "count > 1"), "checks[0]: unknown key 'fail' (did you mean 'fail_if'?)"),
    (_with("sinks.jsonl", {"path": "a.jsonl", "fsynk": "record"}), "sinks.jsonl: unknown key 'fsynk'"),
    (_with("source.reconnect", {"initial": 1}), "source.reconnect: unknown key 'initial'"),
    (_with("checks.0.fail_if", "count >= 1 and __import__('os')"),
     "checks[0].fail_if: check 'missing_cap': fail_if"),
    (_with("checks.0.fail_if", "count >> 1"), "checks[0].fail_if"),
    (_with("checks", MINIMAL["checks"] * 2), "checks[1].name: duplicate check name 'missing_cap'"),
    (_with("checks.0.name", "missing cap"), "checks[0].name: 'missing cap' must be identifier-like"),
    (_with("checks.0.name", "1st"), "must be identifier-like"),
    (_with("checks.0.prompt", "   "), "checks[0].prompt: check 'missing_cap' needs a non-empty prompt"),
    (_with("checks.0.roi", [10, 10, 5, 20]), "checks[0].roi: needs 0 <= x1 < x2"),
    (_with("checks.0.roi", [0, 0, 10]), "checks[0].roi: expected [x1, y1, x2, y2]"),
    (_with("checks.0.roi", [0, 0, "a", 10]), "checks[0].roi: expected a list of numbers"),
    (_with("checks.0.conf", 1.5), "checks[0].conf: must be in 0-1"),
    (_with("checks.0.roi_mode", "overlap"), "checks[0].roi_mode: must be one of centre, inside, got 'overlap'"),
    (_with("checks", []), "checks: a recipe needs at least one check"),
    (_with("checks", {"name": "x"}), "checks: expected a list"),
    (_with("deadline_ms", 0), "deadline_ms: must be positive"),
    (_with("deadline_ms", -5), "deadline_ms: must be positive"),
    (_with("deadline_ms", "fast"), "deadline_ms: expected a number"),
    (_with("model.backend", "tensorrt"), "model.backend: unknown value 'tensorrt' (valid: auto, torch, onnx)"),
    (_with("model.imgsz", 100), "model.imgsz: must be a multiple of 32"),
    (_with("model", {"backend": "torch", "detector": "detector_int8.onnx"}),
     "model.detector: a file name inside the ONNX export folder"),
    (_with("model.detector", "../elsewhere/detector.onnx"), "model.detector: a file name inside"),
    (_with("model.detector", 8), "model.detector: expected a string"),
    (_with("model.imgsz", "big"), "model.imgsz: expected an integer"),
    (_with("source.trigger", "hardware"), "source.trigger: unknown value 'hardware'"),
    (_with("source.uri", ""), "source.uri"),
    (_with("source.uri", True), "source.uri"),
    (_with("sinks.jsonl", {"path": "a.jsonl", "fsync": "never"}), "sinks.jsonl.fsync: unknown value 'never'"),
    (_with("sinks.webhook", {"url": "file:///etc/passwd"}), "sinks.webhook.url: must start with http"),
    (_with("sinks.modbus", {"host": "plc"}), "sinks.modbus: set exactly one of 'coil' or 'register'"),
    (_with("sinks.mqtt", {"host": "b", "qos": 3}), "sinks.mqtt.qos: must be 0, 1 or 2"),
    (_with("stats.port", 70000), "stats.port: must be a TCP port"),
    (_with("version", 2), "version: recipe version 2 is not supported"),
    ({k: v for k, v in MINIMAL.items() if k != "version"}, "missing key 'version'"),
    ({k: v for k, v in MINIMAL.items() if k != "source"}, "missing key 'source'"),
    (["not", "a", "mapping"], "expected a mapping"),
])
def test_bad_recipe_names_the_key(assert_recipe_rejected, data, message):
    assert_recipe_rejected(data, message)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="line recipe not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("checks: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_recipe(bad)
