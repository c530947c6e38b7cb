"""Abstention: familiarity statistics, the flags in every output, both backends, and the line.

A tiny detector is calibrated on noise images (its "training distribution") and on two small
prompt banks; a flat or striped image is then unfamiliar, and a prompt about animals unknown.
"""

from __future__ import annotations

import io
import json
import os
import time

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import settle_tiny_detector

from promptdet.structures import SCHEMA, Detections

KNOWN = ["find the bottles", "the gears", "all cans", "the red boxes", "scratched nuts", "every washer"]
FOREIGN = ["find the dogs", "the cats", "all horses", "the red cars", "people", "every bicycle"]
PROMPTS = ["find all bottles", "find the dogs"]


def noise(rng, n=1, size=64):
    return [(rng.random((size, size, 3)) * 255).astype(np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, save_tiny_checkpoint):
    """(checkpoint path, PromptDet) of a tiny model calibrated on noise and on KNOWN / FOREIGN."""
    import torch

    import promptdet
    from promptdet.config import ModelConfig
    from promptdet.model.detector import PromptDetector
    from promptdet.model.familiarity import pooled_image_features
    from promptdet.runtime.preprocess import to_input
    from promptdet.text.encoder import TextEncoder
    from promptdet.train.familiarity_fit import fit_image_statistics, install

    torch.manual_seed(0)
    m = settle_tiny_detector(PromptDetector(ModelConfig(imgsz=64, max_candidates=16)))
    rng = np.random.default_rng(0)

    def feats(images):
        rows = []
        with torch.no_grad():
            for img in images:
                x, _ = to_input(img, 64)
                rows.append(pooled_image_features(m.backbone(torch.from_numpy(x))).numpy()[0])
        return np.stack(rows).astype(np.float64)

    buffers, _, held_unfamiliar = fit_image_statistics(feats(noise(rng, 60)), feats(noise(rng, 30)), rank=8)
    assert held_unfamiliar <= 0.05
    enc = TextEncoder(None, 48, 0)
    with torch.no_grad():
        known, foreign = enc.encode(KNOWN).pooled.float(), enc.encode(FOREIGN).pooled.float()
    install(m, {**buffers, "prompt_known": known.numpy(), "prompt_foreign": foreign.numpy(),
                "prompt_threshold": 0.0, "prompt_scale": 0.02})
    path = save_tiny_checkpoint(m)
    return path, promptdet.load(path)


def test_uncalibrated_model_claims_nothing(save_tiny_checkpoint):
    import promptdet

    det = promptdet.load(save_tiny_checkpoint()).detect(noise(np.random.default_rng(1))[0], PROMPTS, conf=0.0)
    assert det.familiarity == 1.0 and not det.unfamiliar and det.unknown_prompts == [] and not det.abstained
    assert np.allclose(det.prompt_familiarity, 1.0) and len(det) > 0


def test_checkpoint_without_familiarity_loads_uncalibrated(save_tiny_checkpoint, tmp_path):
    from promptdet.train.checkpoint import load_checkpoint, save_checkpoint

    tensors, meta = load_checkpoint(save_tiny_checkpoint())
    old = {k: v for k, v in tensors.items() if ".familiarity." not in k}
    assert len(old) < len(tensors)
    import promptdet

    model = promptdet.load(save_checkpoint(tmp_path / "old", old, meta))
    assert float(model.detector.familiarity.calibrated) == 0.0


def test_familiar_image_and_known_prompt_keep_their_boxes(calibrated):
    _, model = calibrated
    det = model.detect(noise(np.random.default_rng(5))[0], PROMPTS, conf=0.0)
    assert 0.5 <= det.familiarity <= 1.0 and not det.unfamiliar
    assert det.unknown_prompts == [1] and det.prompt_familiarity[0] > 0.5 > det.prompt_familiarity[1]
    assert det.abstained and len(det) > 0 and set(det.prompt_ids.tolist()) == {0}  # the dogs' boxes withheld


@pytest.mark.parametrize("image", [np.full((64, 64, 3), 255, np.uint8), np.tile(np.array([0, 255], np.uint8).repeat(8),
                                                                                        (64, 4))[:, :64, None].repeat(3, 2)])
def test_unfamiliar_image_gets_no_boxes_unless_asked(calibrated, image):
    _, model = calibrated
    det = model.detect(image, PROMPTS, conf=0.0)
    assert det.unfamiliar and det.familiarity < 0.5 and len(det) == 0 and det.abstained
    kept = model.detect(image, PROMPTS, conf=0.0, abstain=False)
    assert kept.unfamiliar and len(kept) > 0 and not kept.abstained and kept.unknown_prompts == [1]


def test_json_round_trip_keeps_the_flags_and_reads_version_1():
    det = Detections(np.array([[1, 2, 3, 4]]), [0.5], [0], PROMPTS, (64, 48), familiarity=0.25, unfamiliar=True,
                     prompt_familiarity=[0.9, 0.1], unknown_prompts=[1], abstained=True)
    obj = json.loads(json.dumps(det.to_json()))
    assert obj["schema"] == SCHEMA == "promptdet.detections/2"
    back = Detections.from_json(obj)
    assert (back.familiarity, back.unfamiliar, back.unknown_prompts, back.abstained) == (0.25, True, [1], True)
    assert np.allclose(back.prompt_familiarity, [0.9, 0.1])
    v1 = {k: v for k, v in obj.items() if k not in ("familiarity", "unfamiliar", "prompt_familiarity",
                                                     "unknown_prompts", "abstained")}
    v1["schema"] = "promptdet.detections/1"
    old = Detections.from_json(v1)
    assert old.familiarity == 1.0 and old.unknown_prompts == [] and not old.abstained
    with pytest.raises(ValueError, match="unknown prompt indices"):
        Detections.empty(PROMPTS, (4, 4), unknown_prompts=[2])
    with pytest.raises(ValueError, match="prompt familiarities"):
        Detections.empty(PROMPTS, (4, 4), prompt_familiarity=[1.0])


def test_csv_has_the_flags_and_a_row_for_an_image_without_boxes():
    import csv

    from promptdet.writers import ResultWriter

    stream = io.StringIO()
    writer = ResultWriter("csv", PROMPTS, None, stream)
    writer.write(Detections.empty(PROMPTS, (64, 48), image="a.jpg", familiarity=0.1, unfamiliar=True,
                                  unknown_prompts=[1], abstained=True))
    writer.write(Detections(np.array([[1, 2, 3, 4]]), [0.5], [0], PROMPTS, (64, 48), image="b.jpg"))
    rows = list(csv.DictReader(io.StringIO(stream.getvalue())))
    assert [r["image"] for r in rows] == ["a.jpg", "b.jpg"]
    assert rows[0]["score"] == "" and rows[0]["unfamiliar"] == "1" and rows[0]["unknown_prompts"] == "1"
    assert rows[0]["abstained"] == "1" and float(rows[0]["familiarity"]) == 0.1
    assert rows[1]["unfamiliar"] == "0" and rows[1]["x1"] == "1.0" and rows[1]["unknown_prompts"] == ""


def test_onnx_export_gives_the_same_familiarity_and_abstains_alike(calibrated, tmp_path):
    import promptdet
    from promptdet.export.onnx import export_model

    path, model = calibrated
    meta = export_model(model, tmp_path / "exp", dynamic=True, log=lambda line: None)
    assert meta["parity"]["passed"] and meta["abstain"]["calibrated"] is True
    assert meta["outputs"]["familiarity"] == ["batch"]
    onnx_model = promptdet.load(tmp_path / "exp")
    for image in (noise(np.random.default_rng(9))[0], np.full((64, 64, 3), 255, np.uint8)):
        for abstain in (True, False):
            # conf 0.05: at 0 the non-candidates (score 0) of either backend would be counted too
            a = model.detect(image, PROMPTS, conf=0.05, abstain=abstain)
            b = onnx_model.detect(image, PROMPTS, conf=0.05, abstain=abstain)
            assert abs(a.familiarity - b.familiarity) < 1e-4 and a.unfamiliar == b.unfamiliar
            assert a.unknown_prompts == b.unknown_prompts and a.abstained == b.abstained
            assert len(a) == len(b) and (len(a) > 0) == (not a.unfamiliar or not abstain)
            assert np.allclose(a.prompt_familiarity, b.prompt_familiarity, atol=1e-4)


def test_cli_says_why_once_and_no_abstain_keeps_boxes(calibrated, tmp_path):
    import cv2
    from typer.testing import CliRunner

    from promptdet.cli.main import app

    path, _ = calibrated
    img = tmp_path / "white.png"
    cv2.imwrite(str(img), np.full((64, 64, 3), 255, np.uint8))
    args = ["detect", "--weights", str(path), "-p", PROMPTS[0], "-p", PROMPTS[1], "--conf", "0", str(img), str(img)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(lines) == 2 and all(o["unfamiliar"] and o["detections"] == [] for o in lines)
    assert res.stderr.count("look unlike anything the model was trained on") == 1
    assert "'find the dogs' names nothing the model learned" in res.stderr and "--no-abstain" in res.stderr
    kept = CliRunner().invoke(app, args + ["--no-abstain"])
    assert kept.exit_code == 0 and all(json.loads(line)["detections"] for line in kept.stdout.splitlines())


def test_fit_image_statistics_flags_far_points_only():
    from promptdet.train.familiarity_fit import fit_image_statistics

    rng = np.random.default_rng(0)
    fit, held = rng.normal(size=(300, 20)), rng.normal(size=(200, 20))
    buffers, threshold, held_flagged = fit_image_statistics(fit, held, rank=5)
    assert held_flagged <= 0.01 and threshold > 0
    import torch

    from promptdet.model.familiarity import Familiarity

    fam = Familiarity(20, 4)
    fam.calibrated = torch.ones(())
    for k, v in buffers.items():
        setattr(fam, k, torch.as_tensor(np.asarray(v), dtype=torch.float32))
    far = torch.as_tensor(rng.normal(size=(50, 20)) * 4 + 3, dtype=torch.float32)
    near = torch.as_tensor(rng.normal(size=(50, 20)), dtype=torch.float32)
    f_far, _ = fam(far, torch.zeros(1, 1, 4))
    f_near, _ = fam(near, torch.zeros(1, 1, 4))
    assert (f_far < 0.5).all() and (f_near >= 0.5).float().mean() >= 0.96


def test_foreign_version_swaps_every_part_name():
    from promptdet.train.familiarity_fit import foreign_version

    assert foreign_version("the nut left of the gear", "dog") == "the dog left of the dog"
    assert foreign_version("find all bottles", "horse") == "find all horses"
    assert foreign_version("hello there", "dog") is None


# ---------------------------------------------------------------- the line
class FlaggedPredictor:
    backend = "fake"

    def __init__(self, prompts, unfamiliar=False, unknown=()):
        self.prompts, self.unfamiliar, self.unknown = prompts, unfamiliar, list(unknown)

    def __call__(self, image, name=None, frame=None, read_ms=0.0, keep_image=True):
        # Abstaining as the real predictors do: no boxes for an unfamiliar frame.
        return Detections.empty(self.prompts, (64, 48), image=name, frame=frame, familiarity=0.01 if self.unfamiliar
                                else 0.99, unfamiliar=self.unfamiliar, unknown_prompts=self.unknown,
                                abstained=self.unfamiliar or bool(self.unknown))


def _recipe(tmp_path):
    from promptdet.line.recipe import recipe_from_dict

    return recipe_from_dict({
        "version": 1, "model": {"weights": "w", "backend": "torch"},
        "source": {"uri": str(tmp_path), "trigger": "every-frame"},
        "checks": [{"name": "no_defects", "prompt": "find the defective parts", "fail_if": "count >= 1"}],
        "sinks": {"jsonl": {"path": str(tmp_path / "r.jsonl")}, "spool_dir": str(tmp_path / "spool")}})


def test_unfamiliar_frame_is_an_error_never_a_pass(tmp_path):
    from promptdet.line.pipeline import Inspector
    from promptdet.line.sources import Frame

    recipe = _recipe(tmp_path)
    frame = Frame(np.zeros((48, 64, 3), np.uint8), 0, time.time())
    ok, _ = Inspector(recipe, FlaggedPredictor(recipe.prompts))(frame)
    assert ok["verdict"] == "PASS" and "unfamiliar" not in ok["reasons"]
    record, _ = Inspector(recipe, FlaggedPredictor(recipe.prompts, unfamiliar=True))(frame)
    assert record["verdict"] == "ERROR" and "unfamiliar" in record["reasons"] and record["familiarity"] == 0.01


def test_line_refuses_an_unknown_check_prompt_at_start_up(tmp_path):
    from promptdet.errors import UsageError
    from promptdet.line.pipeline import Inspector

    recipe = _recipe(tmp_path)
    with pytest.raises(UsageError, match="check 'no_defects': the model does not know"):
        Inspector(recipe, FlaggedPredictor(recipe.prompts, unknown=[0])).warm_up(runs=1)
    assert Inspector(recipe, FlaggedPredictor(recipe.prompts)).warm_up(runs=1) >= 0.0


def test_decide_unfamiliar_outranks_a_passing_check():
    from promptdet.line.rules import UNFAMILIAR, decide, evaluate_check, parse_rule

    passing = evaluate_check("c", parse_rule("count >= 1"), np.zeros((0, 4)), np.zeros(0), None, 0.5)
    assert decide([passing], None, 1.0).verdict == "PASS"
    verdict = decide([passing], None, 1.0, unfamiliar=True)
    assert verdict.verdict == "ERROR" and verdict.reasons == [UNFAMILIAR]


@pytest.mark.parametrize("args, message", [
    (["--data", "nope.yaml"], "dataset config not found: nope.yaml"),
    (["--data", "datasets/inspection.yaml", "--imgsz", "650"], "--imgsz 650: sizes must be multiples of 32"),
    (["--data", "datasets/inspection.yaml", "--imgsz", "abc"], "--imgsz 'abc': expected sizes such as 640"),
    (["--data", "datasets/inspection.yaml", "--vocab", "no-such-vocab.yaml"], "no-such-vocab.yaml"),
])
def test_calibrate_refuses_bad_input_in_one_line(tmp_path, args, message):
    from typer.testing import CliRunner

    from promptdet.cli.main import app

    res = CliRunner().invoke(app, ["calibrate", "--out", str(tmp_path / "c"), *args])
    assert res.exit_code != 0 and message in res.stderr and "Traceback" not in res.output
    assert not (tmp_path / "c.safetensors").exists()


def test_prompt_banks_larger_than_one_encoder_call():
    from promptdet.limits import MAX_PROMPTS
    from promptdet.text.encoder import TextEncoder
    from promptdet.train.familiarity_fit import fit_prompt_banks

    buffers, _ = fit_prompt_banks(TextEncoder(None, 32), [], [], seed=0)  # calibrate on imported data: no scenes
    assert buffers["prompt_foreign"].shape[0] > MAX_PROMPTS


def _pairs(texts, category="cell"):
    from promptdet.data.pairs import InstructionPair

    return [InstructionPair("m.png", t, [], "category", extra={"query": {"select": {"all": [
        {"category": category}, {"defect": "any"}]}}}) for t in texts]


def test_prompt_banks_from_imported_pairs_know_the_users_classes():
    # A user's converted labels carry no scene facts: their instruction texts and class names make the banks.
    from promptdet.model.familiarity import Familiarity
    from promptdet.text.encoder import TextEncoder
    from promptdet.train.familiarity_fit import class_names, fit_prompt_banks, install

    train = _pairs([f"{verb} the {adj} {noun}" for verb in ("find", "show me", "mark", "locate all")
                    for adj in ("cracked", "defective", "good", "mono", "poly", "damaged")
                    for noun in ("cells", "solar cells", "PV cells")])
    held = _pairs([f"where are the {adj} {noun}?" for adj in ("broken", "faulty", "intact")
                   for noun in ("cells", "photovoltaic cells")])
    names = class_names(train, None)
    assert names == ["cell"]  # read from the queries
    encoder = TextEncoder(None, 32)
    buffers, figures = fit_prompt_banks(encoder, [], [], seed=0, train_pairs=train, heldout_pairs=held,
                                        names=names + ["solar cell", "PV cell", "photovoltaic cell"])
    fam = Familiarity(8, encoder.dim)
    install(type("Detector", (), {"familiarity": fam})(), buffers)
    assert fam.calibrated.item() == 1.0
    pooled = encoder.encode(["find the cracked solar cells", "the defective PV cells", "find the giraffes",
                             "show me the cracked bicycles"]).pooled.float()
    margin = fam.prompt_margin(pooled)
    known = margin[:2] >= fam.prompt_threshold
    assert known.tolist() == [True, True], (margin, fam.prompt_threshold)
    assert (margin[2:] < fam.prompt_threshold).tolist() == [True, True], (margin, fam.prompt_threshold)
    assert figures["known_unknown"] <= 0.1


def test_class_names_come_from_nested_queries_and_the_vocabulary(tmp_path):
    from promptdet.data.user_vocab import load_vocab
    from promptdet.train.familiarity_fit import class_names, foreign_version

    pairs = _pairs(["a"], "solar_cell") + _pairs(["b"], "busbar")
    (tmp_path / "v.yaml").write_text("classes:\n  solar_cell: {synonyms: [PV cell]}\n")
    names = class_names(pairs, load_vocab(tmp_path / "v.yaml"))
    assert names == ["solar cell", "PV cell", "busbar"]  # as words, once each, longest first
    assert class_names([], None) == []
    # longest first: the whole name goes, not just its last word
    assert foreign_version("the cracked solar cells", "dog", ["solar cell", "cell"]) == "the cracked dogs"
    assert foreign_version("all busbars", "horse", []) is None
