"""Training data that teaches an empty answer: names from outside the line, and pictures that are not the line."""

from __future__ import annotations

import difflib
import json
import types
from pathlib import Path

import numpy as np
import pytest

from promptdet.data.query import select_objects, validate
from promptdet.data.synth import templates as T
from promptdet.data.synth.distractors import distractor_image
from promptdet.data.synth.instruct import generate_instructions
from promptdet.data.vocab import CATEGORIES
from promptdet.text.general_vocab import BANK_NOUNS, HELD_OUT


@pytest.fixture(scope="module")
def scenes_root(tmp_path_factory) -> Path:
    from promptdet.data.synth.generate import synthesize

    root = tmp_path_factory.mktemp("empty")
    synthesize(root, 5, seed=11, size_wh=(256, 192), workers=1, per_image=4, progress=False)
    return root


@pytest.fixture(scope="module")
def scenes(scenes_root) -> list[dict]:
    return [json.loads(line) for line in (scenes_root / "scenes.jsonl").read_text().splitlines()]


def _names(text: str, noun: str) -> bool:
    """Whether ``text`` says ``noun`` or its plural, allowing the one typo a wording may carry."""
    words = text.lower().strip(".?!").split()
    n = len(noun.split())
    grams = [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]
    return any(difflib.SequenceMatcher(None, g, form).ratio() >= 0.8
               for g in grams for form in (noun, T.pluralize(noun)))


def test_plural_names_stay_as_they_are():
    assert [T.pluralize(w) for w in ("sunglasses", "jeans", "bus", "glass", "fire truck")] == [
        "sunglasses", "jeans", "buses", "glasses", "fire trucks"]


@pytest.mark.parametrize("split, nouns", [("train", BANK_NOUNS), ("test", HELD_OUT)])
def test_foreign_absent_names_a_general_thing_whose_answer_recomputes_empty(scenes, split, nouns):
    seen = set()
    for seed, scene in enumerate(scenes * 4):
        pairs = generate_instructions(scene, np.random.default_rng(seed), split, per_image=6, absent_rate=1.0,
                                      foreign_share=1.0)
        assert pairs and all(p.type == "absent" for p in pairs)
        for p in pairs:
            query = p.extra["query"]
            validate(query["select"])
            noun = query["select"]["category"]
            assert query["absent"] == "foreign" and noun in nouns and noun not in CATEGORIES
            assert p.boxes_xyxy == [] and select_objects(scene["objects"], query["select"]) == []
            assert _names(p.instruction, noun), p.instruction
            seen.add(noun)
    assert len(seen) >= 10  # drawn from the whole list, not one word


def test_foreign_share_splits_the_absent_pairs_and_is_checked(scenes):
    def foreign_share_of(share):
        kinds = [p.extra["query"]["absent"] for seed, scene in enumerate(scenes * 20)
                 for p in generate_instructions(scene, np.random.default_rng(seed), "train", per_image=6,
                                                absent_rate=0.5, foreign_share=share) if p.type == "absent"]
        return kinds.count("foreign") / len(kinds)

    assert foreign_share_of(0.0) == 0.0
    assert 0.3 < foreign_share_of(0.5) < 0.7
    with pytest.raises(ValueError, match="foreign_share"):
        generate_instructions(scenes[0], np.random.default_rng(0), "train", foreign_share=1.5)


def test_distractor_images_vary_repeat_and_refuse_a_tiny_size():
    a = distractor_image(np.random.default_rng(3), 96)
    assert a.shape == (96, 96, 3) and a.dtype == np.uint8
    assert np.array_equal(a, distractor_image(np.random.default_rng(3), 96))  # the seed decides
    others = [distractor_image(np.random.default_rng(s), 96) for s in range(8)]
    assert len({o.tobytes() for o in others}) == 8
    assert np.mean([o.std() for o in others]) > 5  # pictures, not blank frames
    with pytest.raises(ValueError, match="8 pixels"):
        distractor_image(np.random.default_rng(0), 4)


def _dataset(root: Path, **kw):
    from promptdet.data.dataset import PromptDataset
    from promptdet.data.sources import load_source, resolve_dataset

    (root / "d.yaml").write_text("name: d\nroot: .\ntrain:\n  - {path: ., format: synth}\n")
    cfg = resolve_dataset(str(root / "d.yaml"))
    return PromptDataset([load_source(cfg, cfg.train[0])], 96, prompts_per_image=5, augment=None, **kw)


def test_distractor_items_keep_the_instructions_and_empty_every_answer(scenes_root):
    plain, swapped = _dataset(scenes_root), _dataset(scenes_root, distractors=1.0)
    for i in range(len(plain)):
        a, b = plain[i], swapped[i]
        assert b.image.shape == a.image.shape == (96, 96, 3) and not np.array_equal(a.image, b.image)
        assert b.valid.sum() == a.valid.sum() > 0 and len(b.prompts) == 5
        assert all(isinstance(p, str) and p.strip() for p in b.prompts)
        assert all(len(x) == 0 for x in b.answers) and all(len(g) == 0 for g in b.groups)
        assert len(b.part_boxes) == 0 and len(b.part_kinds) == 0
        assert set(b.types[:int(b.valid.sum())]) == {"absent"}
    assert any(len(x) for i in range(len(plain)) for x in plain[i].answers)  # the plain ones do answer


def test_no_distractors_serves_exactly_what_it_served_before(scenes_root):
    before, now = _dataset(scenes_root), _dataset(scenes_root, distractors=0.0, foreign_absent=0.0)
    for i in range(len(before)):
        a, b = before[i], now[i]
        assert np.array_equal(a.image, b.image) and a.prompts == b.prompts
        assert all(np.array_equal(x, y) for x, y in zip(a.answers, b.answers))


def test_some_distractors_swap_about_that_share(scenes_root):
    ds = _dataset(scenes_root, distractors=0.5)
    swapped = 0
    for epoch in range(8):
        ds.set_epoch(epoch)
        swapped += sum(len(ds[i].part_boxes) == 0 for i in range(len(ds)))
    assert 8 <= swapped <= 32  # of 40 draws


@pytest.mark.parametrize("name", ["distractors", "foreign_absent"])
def test_shares_outside_zero_one_are_refused(scenes_root, name):
    with pytest.raises(ValueError, match=name):
        _dataset(scenes_root, **{name: 1.5})


def test_a_run_cut_short_by_steps_ends_its_cosine_at_the_last_step():
    from promptdet.train.trainer import TrainArgs, Trainer

    def lrs(max_steps):
        fake = types.SimpleNamespace(args=TrainArgs(data="x", epochs=1, lr=1.0, warmup_epochs=0.1,
                                                    final_lr_ratio=0.05, max_steps=max_steps))
        return [Trainer._lr_at(fake, s, 1000) for s in range(1000)]

    cut, full = lrs(200), lrs(0)
    assert cut[199] == pytest.approx(0.05, abs=0.01) and full[199] > 0.9  # cut: at the floor; full: still high
    assert full[999] == pytest.approx(0.05, abs=0.01)
    assert max(cut) == pytest.approx(1.0) and cut[:100] == full[:100]  # same warmup (100 steps)
