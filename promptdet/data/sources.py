"""Resolve what ``--data`` names into sources, and read each source into instruction pairs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from promptdet.config import ConfigError, DatasetConfig, SourceConfig, load_dataset_config
from promptdet.data.pairs import InstructionPair


@dataclass
class LoadedSource:
    """A source's pairs; their ``image`` paths are relative to ``images_root``."""

    config: SourceConfig
    pairs: list[InstructionPair]
    images_root: Path
    scenes: list[dict] | None = None  # synthetic sources: the facts instructions are drawn from


def resolve_dataset(data: str | Path) -> DatasetConfig:
    """A dataset YAML, an instruction JSONL, or a folder holding ``instructions.jsonl`` / ``scenes.jsonl``."""
    path = Path(data)
    if path.suffix in (".yaml", ".yml"):
        return load_dataset_config(path)
    if path.is_file() and path.suffix == ".jsonl":
        src = SourceConfig(path=path.name, format="jsonl")
        return DatasetConfig(name=path.stem, root=str(path.parent.resolve()), train=[src], val=[src])
    if path.is_dir():
        fmt = "synth" if (path / "scenes.jsonl").is_file() else "jsonl"
        if fmt == "jsonl" and not (path / "instructions.jsonl").is_file():
            raise ConfigError(f"{path} holds neither scenes.jsonl nor instructions.jsonl")
        src = SourceConfig(path=".", format=fmt)
        return DatasetConfig(name=path.name, root=str(path.resolve()), train=[src], val=[src])
    raise ConfigError(f"--data {data}: no such dataset YAML, JSONL file or folder")


def _missing(cfg: DatasetConfig, where: Path) -> ConfigError:
    msg = f"data source not found: {where}"
    if cfg.regenerate.strip():
        commands = "; ".join(line.strip() for line in cfg.regenerate.strip().splitlines() if line.strip())
        msg += f". Make it with: {commands}"
    return ConfigError(msg)


def load_source(cfg: DatasetConfig, source: SourceConfig, *, seed: int = 0, split: str = "train",
                absent_rate: float = 0.2) -> LoadedSource:
    """Read one source; ``split`` picks the template wordings for formats phrased here."""
    where = cfg.source_path(source)
    if not where.exists():
        raise _missing(cfg, where)
    if source.format == "synth":
        from promptdet.data.formats.jsonl import read_pairs
        from promptdet.data.synth.generate import read_scenes, write_instructions

        root = where if where.is_dir() else where.parent
        scenes = read_scenes(root)
        instructions = root / "instructions.jsonl"
        if not instructions.is_file():
            write_instructions(scenes, instructions, seed=seed, split=split, absent_rate=absent_rate)
        return LoadedSource(source, read_pairs(instructions), root, scenes)
    if source.format == "jsonl":
        from promptdet.data.formats.jsonl import read_pairs

        file = where / "instructions.jsonl" if where.is_dir() else where
        if not file.is_file():
            raise _missing(cfg, file)
        return LoadedSource(source, read_pairs(file), file.parent)
    from promptdet.data.formats import IMPORTERS

    result = IMPORTERS[source.format](where, images_root=None, seed=seed, templates=split, absent_rate=absent_rate)
    return LoadedSource(source, result.pairs, Path(result.images_dir))


def load_eval_split(data: str | Path, split: str) -> LoadedSource:
    """The source that ``promptdet val`` scores for ``split`` of ``data``: the split's first source
    (``test`` falls back to ``val``), worded with the held-out templates for ``test`` only."""
    cfg = resolve_dataset(data)
    sources = getattr(cfg, split) or (cfg.val if split == "test" else [])
    if not sources:
        raise ConfigError(f"{data}: the dataset lists no {split} sources")
    return load_source(cfg, sources[0], split="test" if split == "test" else "train")
