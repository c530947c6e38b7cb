"""Dataset YAML: typed, strict about keys, and helpful when the data is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptdet.config import ConfigError, load_dataset_config
from promptdet.data.pairs import InstructionPair
from promptdet.data.formats.jsonl import write_pairs
from promptdet.data.sources import load_source, resolve_dataset

REPO = Path(__file__).resolve().parents[1]


def test_bundled_inspection_yaml_loads():
    cfg = load_dataset_config(REPO / "datasets/inspection.yaml")
    assert cfg.name == "inspection"
    assert [s.format for s in cfg.train] == ["synth"] and cfg.val and cfg.test
    assert cfg.root_dir() == (REPO / "data/inspection").resolve()
    assert "promptdet data synth" in cfg.regenerate


@pytest.mark.parametrize("name", ["inspection-xl", "inspection-line"])
def test_bigger_inspection_yamls_share_val_and_test(name):
    base = load_dataset_config(REPO / "datasets/inspection.yaml")
    cfg = load_dataset_config(REPO / f"datasets/{name}.yaml")
    assert cfg.name == name and len(cfg.train) == 2
    assert [s.path for s in cfg.val] == [s.path for s in base.val] and [s.path for s in cfg.test] == [s.path for s in base.test]
    for source in cfg.train:  # every train folder is made by one of the regenerate commands
        assert f"data/inspection/{source.path} " in cfg.regenerate


@pytest.mark.parametrize("text, message", [
    ("name: x\ntrian: []\n", "unknown key 'trian' (did you mean 'train'?)"),
    ("train:\n  - {path: a, fromat: jsonl}\n", "train[0]: unknown key 'fromat'"),
    ("train:\n  - {format: jsonl}\n", "missing key 'path'"),
    ("train:\n  - {path: a, format: voc}\n", "unknown format 'voc'"),
    ("train:\n  - {path: a, weight: -1}\n", "weight: must be positive"),
    ("train:\n  - {path: a, weight: heavy}\n", "expected a number"),
    ("train: [\n", "invalid YAML"),
    ("- just a list\n", "expected a mapping"),
])
def test_bad_yaml_names_the_key(tmp_path, text, message):
    path = tmp_path / "d.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=None) as err:
        load_dataset_config(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_missing_source_prints_the_command_that_makes_it(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text("root: nowhere\nregenerate: promptdet data synth --out nowhere/train --num 5\n"
                    "train:\n  - {path: train, format: synth}\n")
    cfg = load_dataset_config(path)
    with pytest.raises(ConfigError) as err:
        load_source(cfg, cfg.train[0])
    assert "promptdet data synth --out nowhere/train --num 5" in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_dataset_config(tmp_path / "none.yaml")


def test_resolve_jsonl_file_and_folder(tmp_path):
    pairs = [InstructionPair("images/a.jpg", "find all nuts", [[1, 2, 3, 4]], "category"),
             InstructionPair("images/a.jpg", "find all gears", [], "absent")]
    write_pairs(pairs, tmp_path / "instructions.jsonl")
    for arg in (tmp_path / "instructions.jsonl", tmp_path):
        cfg = resolve_dataset(arg)
        loaded = load_source(cfg, cfg.train[0])
        assert [p.instruction for p in loaded.pairs] == ["find all nuts", "find all gears"]
        assert loaded.images_root == tmp_path.resolve()
    with pytest.raises(ConfigError):
        resolve_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither"):
        resolve_dataset(tmp_path / "empty")
