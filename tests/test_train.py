"""Training end to end at tiny size: checkpoints round-trip and resume, pickles are refused,
the CLI trains and validates, and two CPU processes train under torchrun (DDP, gloo)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from promptdet.config import ModelConfig
from promptdet.train import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]
TINY = {"imgsz": 64, "batch": 4, "workers": 0, "val_max_pairs": 12, "progress": False}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from promptdet.data.synth.generate import synthesize

    root = tmp_path_factory.mktemp("tiny")
    synthesize(root / "train", 8, seed=0, size_wh=(160, 120), workers=1, per_image=4, progress=False)
    synthesize(root / "val", 3, seed=1, size_wh=(160, 120), workers=1, per_image=4, progress=False)
    (root / "tiny.yaml").write_text("name: tiny\nroot: .\ntrain:\n  - {path: train, format: synth}\n"
                                    "val:\n  - {path: val, format: synth}\ntest:\n  - {path: val, format: synth}\n")
    return root


@pytest.fixture(scope="module")
def encoder():
    from promptdet.text.encoder import TextEncoder

    return TextEncoder(None, 32)


def _trainer(data: Path, out: Path, encoder, resume=False, **kw):
    from promptdet.train.trainer import TrainArgs, Trainer

    args = TrainArgs(data=str(data), out=str(out), **{**TINY, **kw})
    return Trainer(args, ModelConfig(imgsz=64, max_candidates=16, max_tokens=32), resume=resume, encoder=encoder)


def test_train_save_load_and_resume_give_identical_weights(tiny_data, tmp_path, encoder):
    out = tmp_path / "run"
    trainer = _trainer(tiny_data / "tiny.yaml", out, encoder, epochs=2, max_steps=2)
    metrics = trainer.train()
    for name in ("last.safetensors", "last.json", "best.safetensors", "results.csv", "loss_curves.png", "pr_all.png"):
        assert (out / name).is_file(), name
    assert "types" in metrics and metrics["order_invariance_max_abs_score_change"] < 1e-4

    tensors, meta = ckpt.load_checkpoint(out / "last.safetensors")
    assert meta["epoch"] == 0 and meta["model"]["imgsz"] == 64 and "optimizer" in meta
    resumed = _trainer(tiny_data / "tiny.yaml", out, encoder, resume=True, epochs=2, max_steps=0)
    assert resumed.start_epoch == 1
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, tensors[f"train.{k}"]), k
    for k, v in resumed.ema.ema.state_dict().items():
        assert torch.equal(v, tensors[f"model.{k}"]), k
    saved_opt = ckpt.optimizer_from_tensors(tensors, meta["optimizer"])
    assert resumed.optimizer.state_dict()["state"].keys() == saved_opt["state"].keys()

    import promptdet

    model = promptdet.load(out / "last.safetensors")
    for k, v in model.detector.state_dict().items():
        assert torch.equal(v, tensors[f"model.{k}"]), k


def test_pickled_checkpoint_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    for name in ("evil.pt", "evil.safetensors"):
        path = tmp_path / name
        path.write_bytes(pickle.dumps(Evil()))
        with pytest.raises(ckpt.CheckpointError):
            ckpt.load_checkpoint(path)
    torch.save({"w": torch.zeros(1)}, tmp_path / "zip.bin")
    with pytest.raises(ckpt.CheckpointError, match="pickled"):
        ckpt.load_checkpoint(tmp_path / "zip.bin")
    assert not marker.exists()


def test_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "none.safetensors")
    ckpt.save_checkpoint(tmp_path / "a", {"x": torch.ones(2)}, {"k": 1})
    (tmp_path / "a.json").write_text('{"format": "other"}')
    with pytest.raises(ckpt.CheckpointError, match="not a promptdet checkpoint"):
        ckpt.load_checkpoint(tmp_path / "a.safetensors")
    ckpt.save_checkpoint(tmp_path / "b", {"x": torch.ones(2)}, {})
    (tmp_path / "b.safetensors").write_bytes(b"garbage")
    with pytest.raises(ckpt.CheckpointError, match="unreadable"):
        ckpt.load_checkpoint(tmp_path / "b.safetensors")
    with pytest.raises(ckpt.CheckpointError, match="no best.safetensors"):
        ckpt.load_checkpoint(tmp_path)


def _run(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout, check=False)


def test_cli_train_then_val(tiny_data, tmp_path):
    cli = [sys.executable, "-m", "promptdet.cli.main"]
    r = _run(cli + ["train", "--data", str(tiny_data / "tiny.yaml"), "--imgsz", "64", "--epochs", "1", "--batch", "4",
                    "--out", str(tmp_path / "run")], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "run" / "best.safetensors").is_file() and "category" in r.stderr
    # A changed architecture from earlier weights: what fits is taken, the word pooling starts fresh.
    r = _run(cli + ["train", "--data", str(tiny_data / "tiny.yaml"), "--imgsz", "64", "--epochs", "1", "--batch", "4",
                    "--weights", str(tmp_path / "run"), "--model", str(REPO / "configs" / "promptdet-n.yaml"),
                    "--warmup-epochs", "0.25", "--time", "0.00001", "--no-cache", "--freeze-bn", "--out", str(tmp_path / "run2")],
             tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "initial weights: 3 missing and 0 unexpected tensors" in r.stderr, r.stderr[-2000:]
    meta = ckpt.load_checkpoint(tmp_path / "run2")[1]
    assert meta["model"]["word_pool_heads"] == 4
    # The options reach the trainer (the spent time budget ends the run after one epoch).
    assert meta["train_args"]["warmup_epochs"] == 0.25 and meta["train_args"]["cache_images"] is False
    assert meta["train_args"]["time"] == 0.00001 and meta["epoch"] == 0 and meta["train_args"]["freeze_bn"] is True
    r = _run(cli + ["val", "--data", str(tiny_data / "tiny.yaml"), "--weights", str(tmp_path / "run"), "--split", "test",
                    "--out", str(tmp_path / "val"), "--plots"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "absent" in r.stdout and (tmp_path / "val" / "metrics.json").is_file()
    r = _run(cli + ["val", "--data", str(tiny_data / "tiny.yaml"), "--weights", str(tmp_path / "nothing")], tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "error:" in r.stderr
    # No --weights: the bundled model, as for detect and export.
    r = _run(cli + ["val", "--data", str(tiny_data / "tiny.yaml"), "--imgsz", "64", "--out", str(tmp_path / "val0")], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "val0" / "metrics.json").read_text())["types"], r.stdout


def test_ddp_two_cpu_processes(tiny_data, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(
        "import sys\n"
        "from promptdet.config import ModelConfig\n"
        "from promptdet.train.trainer import Trainer, TrainArgs\n"
        f"args = TrainArgs(data={str(tiny_data / 'tiny.yaml')!r}, out={str(tmp_path / 'ddp')!r}, epochs=1, "
        "imgsz=64, batch=2, workers=0, max_steps=2, val_max_pairs=6, progress=False, device='cpu', defect_probe=0.5)\n"
        "Trainer(args, ModelConfig(imgsz=64, max_candidates=16, max_tokens=32)).train()\n")
    r = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", str(script)],
             tmp_path, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    tensors, meta = ckpt.load_checkpoint(tmp_path / "ddp" / "last.safetensors")
    assert meta["epoch"] == 0 and any(k.startswith("model.") for k in tensors)
    assert any(k.startswith("probe.") for k in tensors)  # the probe's gradients were averaged by hand


def test_replay_mixes_base_data_at_the_requested_ratio(tiny_data, tmp_path, encoder):
    from promptdet.data.formats.jsonl import write_pairs
    from promptdet.data.pairs import InstructionPair

    user = tmp_path / "user"
    user.mkdir()
    import shutil

    for name in ("000000.jpg", "000001.jpg"):
        shutil.copy(tiny_data / "train" / "images" / name, user / name)
    write_pairs([InstructionPair("000000.jpg", "find the nuts", [[1, 1, 20, 20]], "category"),
                 InstructionPair("000001.jpg", "find the gears", [], "absent")], user / "instructions.jsonl")
    trainer = _trainer(user, tmp_path / "ft", encoder, epochs=1, max_steps=1, replay=str(tiny_data / "tiny.yaml"),
                       replay_ratio=0.3)
    sampler = trainer.loader.sampler
    draws = list(torch.multinomial(sampler.weights, 4000, replacement=True))
    replay_share = sum(trainer.train_set.source_of(int(i)) == 1 for i in draws) / len(draws)
    assert abs(replay_share - 0.3) < 0.04, replay_share


def test_slim_checkpoint_keeps_the_model_in_half_precision(tmp_path):
    import dataclasses

    import promptdet
    from promptdet.model.detector import PromptDetector

    model = PromptDetector(ModelConfig(imgsz=64, max_candidates=8))
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors["train.x"] = torch.ones(3)
    ckpt.save_checkpoint(tmp_path / "full", tensors, {"model": dataclasses.asdict(model.cfg), "optimizer": {"state": {}}})
    ckpt.slim_checkpoint(tmp_path / "full.safetensors", tmp_path / "slim")
    slim, meta = ckpt.load_checkpoint(tmp_path / "slim.safetensors")
    assert "train.x" not in slim and "optimizer" not in meta and meta["storage"] == "float16"
    # The image familiarity statistics stay float32: their distances sum hundreds of squared features.
    assert all(v.dtype == torch.float16 for k, v in slim.items() if v.is_floating_point() and ".familiarity.image_" not in k)
    assert all(v.dtype == torch.float32 for k, v in slim.items() if ".familiarity.image_" in k)
    loaded = promptdet.load(tmp_path / "slim.safetensors").detector.state_dict()
    for k, v in model.state_dict().items():
        assert loaded[k].dtype == v.dtype and torch.allclose(loaded[k].float(), v.float(), atol=1e-2, rtol=1e-3), k


def test_type_weights_and_hard_absent_mix_shape_the_drawn_instructions(tiny_data, tmp_path, encoder):
    from collections import Counter

    def drawn(**kw):
        trainer = _trainer(tiny_data / "tiny.yaml", tmp_path / str(len(kw)), encoder, epochs=1, max_steps=1,
                           prompts_per_image=8, **kw)
        counts = Counter()
        for epoch in range(6):
            trainer.train_set.set_epoch(epoch)
            for i in range(len(trainer.train_set)):
                counts.update(t for t in trainer.train_set[i].types if t != "pad")
        return counts

    plain, weighted = drawn(), drawn(type_weights={"defect": 3}, absent_rate=0.4, absent_mix="hard")
    positive_share = lambda c, t: c[t] / (sum(c.values()) - c["absent"])
    assert positive_share(weighted, "defect") > positive_share(plain, "defect") + 0.05, (plain, weighted)
    assert weighted["absent"] / sum(weighted.values()) > plain["absent"] / sum(plain.values()), (plain, weighted)


@pytest.mark.parametrize("text, message", [("defec=2", "unknown type"), ("defect=0", "whole number"),
                                           ("defect=x", "whole number")])
def test_cli_rejects_bad_type_weights(text, message, tiny_data):
    from typer.testing import CliRunner

    from promptdet.cli.main import app

    result = CliRunner().invoke(app, ["train", "--data", str(tiny_data / "tiny.yaml"), "--type-weights", text])
    flat = " ".join(result.output.replace("│", " ").split())  # rich wraps the message in a box
    assert result.exit_code == 2 and message in flat, result.output


def test_time_budget_fits_the_epoch_count(tiny_data, tmp_path, encoder):
    # A budget already spent ends the run after its first epoch, whatever --epochs said.
    out = tmp_path / "timed"
    trainer = _trainer(tiny_data / "tiny.yaml", out, encoder, epochs=5, time=1e-7)
    trainer.train()
    rows = (out / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 2, rows  # the header and one epoch
    assert trainer.args.epochs == 1
    # The count follows the mean epoch: 2 epochs in 10 s, 60 s budget -> 10 more fit.
    trainer.args.time = 60 / 3600
    assert trainer._epochs_for_budget(2, 10.0) == 12
    assert trainer._epochs_for_budget(2, 70.0) == 2  # over budget: stop now
    # A part-epoch left is trained (the last epoch stops on the clock), less than a quarter is not.
    trainer.args.time = 1080 / 3600
    assert trainer._epochs_for_budget(1, 650.0) == 2
    assert trainer._epochs_for_budget(1, 940.0) == 1


def test_loss_takes_half_precision_outputs_as_under_amp(tiny_data, tmp_path, encoder):
    # On a GPU the forward runs under autocast (float16). The assigner used to fail on half boxes.
    from promptdet.train.validate import encode_prompt_grid

    trainer = _trainer(tiny_data / "tiny.yaml", tmp_path / "amp", encoder, epochs=1)
    images, prompts, targets, _ = next(iter(trainer.loader))
    images = images.float() / 255
    pooled, tokens, mask = encode_prompt_grid(trainer.encoder, prompts, trainer.device)
    with torch.autocast("cpu", dtype=torch.float16):
        out = trainer.model(images, pooled, tokens, mask)
    assert out.boxes_xyxy.dtype == torch.float16  # the case under test really happened
    loss, _items = trainer.loss(out, targets, images.shape[2:])
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in trainer.model.parameters() if p.grad is not None)


def _empty_targets(answer_rows, valid_rows=None, b=2, k=3, g=2):
    from promptdet.train.loss import PromptTargets

    mask = torch.zeros(b, k, g, dtype=torch.bool)
    for i, j in answer_rows:
        mask[i, j, 0] = True
    valid = torch.ones(b, k, dtype=torch.bool)
    for i, j in valid_rows or []:
        valid[i, j] = False
    boxes = torch.zeros(b, k, g, 4)
    return PromptTargets(boxes, mask, boxes.clone(), mask.clone(), valid)


@pytest.mark.parametrize("answer_rows, padding_rows, expected", [
    # every row has an answer: nothing to punish, a zero that still backpropagates
    ([(i, j) for i in range(2) for j in range(3)], [], 0.0),
    # one empty row whose best candidate has logit 5 (the others are below it): softplus(5)
    ([(i, j) for i in range(2) for j in range(3) if (i, j) != (1, 2)], [], 5.006715),
    # the empty row is padding: ignored
    ([(i, j) for i in range(2) for j in range(3) if (i, j) != (1, 2)], [(1, 2)], 0.0),
])
def test_empty_answer_loss_punishes_the_best_candidate_of_empty_rows(answer_rows, padding_rows, expected):
    from promptdet.train.loss import empty_answer_loss

    logits = torch.full((2, 3, 4), -3.0)
    logits[1, 2, 1] = 5.0
    logits[1, 2, 3] = 9.0  # not a valid candidate: never the "best" one
    logits.requires_grad_(True)
    valid = torch.ones(2, 3, 4, dtype=torch.bool)
    valid[1, 2, 3] = False
    loss = empty_answer_loss(logits, valid, _empty_targets(answer_rows, padding_rows))
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    loss.backward()
    touched = (logits.grad != 0).nonzero().tolist()
    assert touched == ([[1, 2, 1]] if expected else [])  # only the top valid candidate of the empty row


def test_empty_weight_adds_its_loss_term(tiny_data, tmp_path, encoder):
    from promptdet.train.validate import encode_prompt_grid

    trainer = _trainer(tiny_data / "tiny.yaml", tmp_path / "empty", encoder, epochs=1, empty_weight=2.0,
                       absent_rate=1.0)
    images, prompts, targets, _ = next(iter(trainer.loader))
    assert not targets.answer_mask.any()  # every instruction of this step has an empty answer
    pooled, tokens, mask = encode_prompt_grid(trainer.encoder, prompts, trainer.device)
    out = trainer.model(images.float() / 255, pooled, tokens, mask)
    _, items = trainer.loss(out, targets, images.shape[2:])
    assert items["empty"] > 0
    off = _trainer(tiny_data / "tiny.yaml", tmp_path / "off", encoder, epochs=1)
    assert "empty" not in off.loss(out, targets, images.shape[2:])[1]


def test_prompt_lr_mult_scales_only_the_prompt_side(tiny_data, tmp_path, encoder):
    from promptdet.train.trainer import PROMPT_SIDE

    trainer = _trainer(tiny_data / "tiny.yaml", tmp_path / "run", encoder, epochs=1, max_steps=1, prompt_lr_mult=10.0)
    groups = trainer.optimizer.param_groups
    prompt_ids = {id(p) for n, p in trainer.model.named_parameters() if n.startswith(PROMPT_SIDE)}
    assert prompt_ids and len(prompt_ids) < len(list(trainer.model.parameters()))
    for g in groups:  # every group is all prompt side or all image side, with its multiplier
        sides = {id(p) in prompt_ids for p in g["params"]}
        assert len(sides) == 1 and g["lr_mult"] == (10.0 if sides.pop() else 1.0)
    assert sum(len(g["params"]) for g in groups) == len(list(trainer.model.parameters()))
    trainer.train()
    lrs = {g["lr_mult"]: g["lr"] for g in groups}
    assert lrs[10.0] == pytest.approx(10 * lrs[1.0]) and lrs[1.0] > 0


def test_native_crop_run_validates_and_saves_at_val_imgsz(tiny_data, tmp_path, encoder):
    from promptdet.api import PromptDet

    model = PromptDet(ModelConfig(imgsz=64, max_candidates=16, max_tokens=32))
    model._encoder = encoder
    out = tmp_path / "run"
    model.train(str(tiny_data / "tiny.yaml"), epochs=1, imgsz=64, out=str(out), native_crop=1.0, val_imgsz=96,
                **{k: v for k, v in TINY.items() if k not in ("imgsz", "batch")}, max_steps=1)
    _, meta = ckpt.load_checkpoint(out / "last.safetensors")
    # Trained on 64-px windows of the 160x120 scenes, but meant (and validated) at 96.
    assert meta["model"]["imgsz"] == 96 and meta["train_args"]["native_crop"] == 1.0
    assert model.cfg.imgsz == 96


def test_cli_rejects_a_native_crop_share_out_of_range(tiny_data):
    from typer.testing import CliRunner

    from promptdet.cli.main import app

    result = CliRunner().invoke(app, ["train", "--data", str(tiny_data / "tiny.yaml"), "--native-crop", "1.5"])
    assert result.exit_code == 2 and "native-crop" in result.output, result.output


def test_cli_rejects_a_val_imgsz_that_is_no_model_size(tiny_data, tmp_path):
    from typer.testing import CliRunner

    from promptdet.cli.main import app

    result = CliRunner().invoke(app, ["train", "--data", str(tiny_data / "tiny.yaml"), "--val-imgsz", "100",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "--val-imgsz" in result.output, result.output
    assert not (tmp_path / "run").exists()


def _probe_inputs(kinds):
    """Two anchors per part, in the middle of each part's box; region embeddings [1, A, 4]."""
    boxes = torch.tensor([[[0.0, 0.0, 8.0, 8.0], [16.0, 0.0, 24.0, 8.0], [32.0, 0.0, 40.0, 8.0]]])
    anchors = torch.tensor([[4.0, 4.0], [4.5, 4.0], [20.0, 4.0], [20.5, 4.0], [36.0, 4.0], [36.5, 4.0], [60.0, 60.0]])
    region = torch.randn(1, len(anchors), 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    return region, anchors, boxes, torch.tensor([kinds])


def test_defect_probe_reads_kinds_and_ignores_padding():
    from promptdet.train.loss import DefectProbe

    probe = DefectProbe(4, 3, clean_weight=1.0)
    region, anchors, boxes, kinds = _probe_inputs([1, 2, -1])
    loss = probe(region, anchors, boxes, kinds)
    loss.backward()
    # Only the anchors inside labelled parts get a gradient: not the ignored part's, not the stray one's.
    touched = region.grad.abs().sum(-1)[0] > 0
    assert touched.tolist() == [True, True, True, True, False, False, False]
    # No labelled part: a zero that still backpropagates.
    none = probe(region, anchors, boxes, torch.tensor([[-1, -1, -1]]))
    assert none.item() == 0.0 and none.requires_grad
    # It can learn to tell the kinds apart from the embeddings (the point of it).
    opt = torch.optim.Adam(list(probe.parameters()) + [region], lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        loss = probe(region, anchors, boxes, kinds)
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_defect_probe_trains_saves_and_resumes(tiny_data, tmp_path, encoder):
    out = tmp_path / "run"
    trainer = _trainer(tiny_data / "tiny.yaml", out, encoder, epochs=2, max_steps=2, defect_probe=0.5)
    before = {k: v.clone() for k, v in trainer.probe.state_dict().items()}
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in trainer.probe.state_dict().items())  # it learned
    tensors, _ = ckpt.load_checkpoint(out / "last.safetensors")
    assert any(k.startswith("probe.") for k in tensors)
    best, _ = ckpt.load_checkpoint(out / "best.safetensors")
    assert not any(k.startswith("probe.") for k in best)  # a training aid: not part of the model
    resumed = _trainer(tiny_data / "tiny.yaml", out, encoder, resume=True, epochs=2, max_steps=0, defect_probe=0.5)
    for k, v in resumed.probe.state_dict().items():
        assert torch.equal(v, tensors[f"probe.{k}"]), k


def test_average_checkpoints_is_the_mean_and_refuses_other_architectures(tmp_path, save_tiny_checkpoint):
    from promptdet.config import ModelConfig as MC
    from promptdet.model.detector import PromptDetector

    torch.manual_seed(0)
    a, b = save_tiny_checkpoint(), save_tiny_checkpoint()  # two fresh inits: different weights
    out = ckpt.average_checkpoints([a, b], tmp_path / "soup")
    ta, _ = ckpt.load_checkpoint(a)
    tb, _ = ckpt.load_checkpoint(b)
    soup, meta = ckpt.load_checkpoint(out)
    k = next(k for k, v in ta.items() if v.is_floating_point() and not torch.equal(v, tb[k]))
    assert torch.allclose(soup[k], (ta[k] + tb[k]) / 2)
    assert meta["averaged_from"] == [str(a), str(b)]
    import promptdet

    promptdet.load(out)  # loads as a model
    other = save_tiny_checkpoint(PromptDetector(MC(imgsz=64, max_candidates=16, embed_dim=64)))
    with pytest.raises(ckpt.CheckpointError, match="same architecture"):
        ckpt.average_checkpoints([a, other], tmp_path / "bad")
    with pytest.raises(ckpt.CheckpointError, match="at least two"):
        ckpt.average_checkpoints([a], tmp_path / "one")


def test_train_only_the_verifier_leaves_every_other_tensor_as_it_was(tiny_data, tmp_path, encoder):
    from promptdet.errors import UsageError
    from promptdet.model.detector import PromptDetector
    from promptdet.train.trainer import TrainArgs, Trainer

    cfg = ModelConfig(imgsz=64, max_candidates=8, max_tokens=32, verify_top_k=4, verify_crop=16)
    torch.manual_seed(0)
    before = PromptDetector(cfg).state_dict()
    init = {k: v.clone() for k, v in before.items()}
    args = TrainArgs(data=str(tiny_data / "tiny.yaml"), out=str(tmp_path / "run"), epochs=1, max_steps=3, lr=0.01,
                     train_only=["verifier"], **TINY)
    trainer = Trainer(args, cfg, init_weights=init, encoder=encoder)
    trainer.train()
    after = trainer._raw_model().state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("verifier.") for k in changed)  # BatchNorm statistics of the trunk too
    with pytest.raises(UsageError, match="no module 'verfier'"):
        Trainer(TrainArgs(data=str(tiny_data / "tiny.yaml"), out=str(tmp_path / "run2"), train_only=["verfier"], **TINY),
                cfg, encoder=encoder)


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_freeze_bn_keeps_every_running_statistic_and_still_trains(freeze_bn, tiny_data, tmp_path, encoder):
    from promptdet.model.detector import PromptDetector
    from promptdet.train.trainer import TrainArgs, Trainer

    cfg = ModelConfig(imgsz=64, max_candidates=8, max_tokens=32)
    torch.manual_seed(0)
    init = {k: v.clone() for k, v in PromptDetector(cfg).state_dict().items()}
    args = TrainArgs(data=str(tiny_data / "tiny.yaml"), out=str(tmp_path / "run"), epochs=1, max_steps=2, lr=0.01,
                     freeze_bn=freeze_bn, **TINY)
    trainer = Trainer(args, cfg, init_weights=init, encoder=encoder)
    trainer.train()
    after = trainer._raw_model().state_dict()
    stats = [k for k in init if k.endswith(("running_mean", "running_var"))]
    moved_stats = [k for k in stats if not torch.equal(init[k], after[k])]
    assert stats and (not moved_stats if freeze_bn else moved_stats)
    # the weights still train, BatchNorm's own affine weights included
    assert any(not torch.equal(init[k], after[k]) for k in init if k.endswith("bn.weight"))



def test_a_time_budget_ends_mid_epoch_with_the_lr_annealed(tiny_data, tmp_path, encoder, monkeypatch):
    # One epoch longer than the whole budget (a small set with replay on a CPU): the run must stop
    # inside it, validated and saved, and the cosine must have followed the clock down to its floor.
    from promptdet.train import trainer as trainer_module

    clock = {"t": 0.0}
    monkeypatch.setattr(trainer_module.time, "perf_counter", lambda: clock["t"])
    out = tmp_path / "clock"
    trainer = _trainer(tiny_data / "tiny.yaml", out, encoder, epochs=50, time=10 / 3600, batch=1, warmup_epochs=0.0)
    steps_per_epoch = len(trainer.loader)
    assert steps_per_epoch >= 4
    lrs = []
    real_step = trainer.optimizer.step

    def step_and_tick(*a, **kw):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        clock["t"] += 4.0  # each step costs 4 s of a 10 s budget: the 4th step finds it spent
        return real_step(*a, **kw)

    monkeypatch.setattr(trainer.optimizer, "step", step_and_tick)
    trainer.train()
    assert len(lrs) == 3 < steps_per_epoch  # stopped mid-epoch
    assert lrs[0] > lrs[1] > lrs[2]  # by the clock: 0%, 40%, 80% of the budget
    floor = trainer.args.lr * trainer.args.final_lr_ratio
    assert lrs[2] < floor + 0.2 * (trainer.args.lr - floor)
    assert trainer.args.epochs == 1 and (out / "last.safetensors").is_file()
    assert len((out / "results.csv").read_text().strip().splitlines()) == 2


def _pairs_source(boxes_by_instruction: dict[tuple[str, str], list]):
    from promptdet.config import SourceConfig
    from promptdet.data.pairs import InstructionPair
    from promptdet.data.sources import LoadedSource

    pairs = [InstructionPair(image, text, boxes) for (image, text), boxes in boxes_by_instruction.items()]
    return LoadedSource(SourceConfig(path=".", format="jsonl"), pairs, Path("."))


def test_verifier_rescores_every_object_of_the_busiest_training_image():
    from promptdet.config import SourceConfig
    from promptdet.data.sources import LoadedSource
    from promptdet.errors import UsageError
    from promptdet.train.trainer import fit_verifier_to_data, most_objects_per_image

    cells = [[10.0 * i, 0.0, 10.0 * i + 9, 9.0] for i in range(12)]
    # A module of 12 cells that no single instruction names all of: 5 defective + 7 intact, one cell in both
    # answers (the same box counts once), and a second image with 2 boxes.
    module = _pairs_source({("m.png", "defective cells"): cells[:5], ("m.png", "intact cells"): cells[4:],
                            ("m.png", "cracked dogs"): [], ("n.png", "all cells"): cells[:2]})
    assert most_objects_per_image([module]) == 12
    scenes = LoadedSource(SourceConfig(path=".", format="synth"), [], Path("."),
                          scenes=[{"objects": [{}] * 3}, {"objects": [{}] * 15}])
    assert most_objects_per_image([module, scenes]) == 15
    assert most_objects_per_image([_pairs_source({("e.png", "cats"): []})]) == 0

    said = []
    def say(msg, file=None):
        said.append(msg)

    cfg = ModelConfig(verify_top_k=8, max_candidates=48)
    assert fit_verifier_to_data(cfg, [module], say=say).verify_top_k == 16  # 12 objects + a margin of 4
    assert len(said) == 1 and "rescoring 16 candidates per prompt (was 8)" in said[0] and "12 objects" in said[0]
    assert fit_verifier_to_data(ModelConfig(verify_top_k=8, max_candidates=14), [module], say=say).verify_top_k == 14
    assert fit_verifier_to_data(ModelConfig(verify_top_k=20), [module], say=say).verify_top_k == 20  # never lowered
    assert fit_verifier_to_data(ModelConfig(verify_top_k=8), [_pairs_source({("e.png", "x"): cells[:3]})],
                                say=say).verify_top_k == 8
    assert len(said) == 2  # a kept count says nothing
    assert fit_verifier_to_data(cfg, [module], requested=10, say=say).verify_top_k == 10  # asked for: lowered too
    assert fit_verifier_to_data(ModelConfig(verify_top_k=0), [module], say=say).verify_top_k == 0  # no verifier
    with pytest.raises(UsageError, match="no crop verifier"):
        fit_verifier_to_data(ModelConfig(verify_top_k=0), [module], requested=4)
    with pytest.raises(UsageError, match=r"--verify-top-k 60: at most max_candidates \(48\)"):
        fit_verifier_to_data(cfg, [module], requested=60)


def test_fine_tune_saves_the_verifier_count_it_trained_with(tiny_data, tmp_path, encoder):
    import promptdet
    from promptdet.data.synth.generate import read_scenes
    from promptdet.train.trainer import TrainArgs, Trainer

    cfg = ModelConfig(imgsz=64, max_candidates=16, max_tokens=32, verify_top_k=2, verify_crop=16)
    trainer = Trainer(TrainArgs(data=str(tiny_data / "tiny.yaml"), out=str(tmp_path / "run"), epochs=1, max_steps=1,
                                **TINY), cfg, encoder=encoder)
    most = max(len(scene["objects"]) for scene in read_scenes(tiny_data / "train"))
    expected = min(16, most + 4)
    assert trainer.cfg.verify_top_k == expected > 2
    assert trainer.model.verifier.top_k == trainer.ema.ema.verifier.top_k == expected
    trainer.train()
    _, meta = ckpt.load_checkpoint(tmp_path / "run" / "best.safetensors")
    assert meta["model"]["verify_top_k"] == expected
    assert promptdet.load(tmp_path / "run").detector.verifier.top_k == expected


def _outputs(dense: torch.Tensor, cand_logits: torch.Tensor, m: int):
    """A DetectorOutput with the given stage-1 logits [B, K, A] and final logits [B, K, M] at stage 1's top M."""
    from promptdet.model.detector import DetectorOutput

    b, k, a = dense.shape
    idx = dense.topk(m, dim=2).indices
    return DetectorOutput(box_dist=torch.zeros(b, a, 4), boxes_xyxy=torch.zeros(b, a, 4), dense_logits=dense,
                          cand_idx=idx, cand_logits=cand_logits, cand_valid=torch.ones(b, k, m, dtype=torch.bool),
                          anchor_points=torch.zeros(a, 2), stride_tensor=torch.ones(a, 1),
                          region_embeds=torch.zeros(b, a, 8), image_familiarity=torch.ones(b),
                          prompt_familiarity=torch.ones(1, k))


def test_distillation_loss_is_zero_at_agreement_and_pulls_the_student_back():
    from promptdet.train.loss import distillation_loss, rows_of

    g = torch.Generator().manual_seed(0)
    dense, cand = torch.randn(3, 2, 40, generator=g) * 3, torch.randn(3, 2, 6, generator=g) * 3
    teacher = _outputs(dense, cand, 6)
    valid = torch.ones(3, 2, dtype=torch.bool)
    assert abs(float(distillation_loss(teacher, teacher, valid))) < 1e-5
    # A student that drifted: each stage's disagreement costs, and a gradient step on it comes back.
    drifted_final = torch.nn.Parameter(cand + 2.0)
    student = _outputs(dense, drifted_final, 6)
    loss = distillation_loss(student, teacher, valid)
    assert loss > 0.1
    loss.backward()
    assert (drifted_final.grad > 0).all()  # every raised logit is pushed back down
    assert distillation_loss(_outputs(dense + 1.0, cand, 6), teacher, valid) > 0.1
    # Candidates the teacher did not have are pushed towards 0, not ignored.
    other = _outputs(-dense, torch.full_like(cand, 3.0), 6)
    assert distillation_loss(other, teacher, valid) > distillation_loss(_outputs(-dense, torch.full_like(cand, -3.0), 6),
                                                                        teacher, valid)
    # Padding prompts and an empty set of rows cost nothing.
    assert float(distillation_loss(student, teacher, torch.zeros(3, 2, dtype=torch.bool)).detach()) == 0.0
    none = torch.zeros(3, dtype=torch.bool)
    assert float(distillation_loss(rows_of(student, none), rows_of(teacher, none), valid[none])) == 0.0
    picked = rows_of(teacher, torch.tensor([False, True, False]))
    assert torch.equal(picked.dense_logits, dense[1:2]) and picked.anchor_points.shape == (40, 2)


def test_distill_needs_a_starting_model_and_replay_data(tiny_data, tmp_path, encoder):
    from promptdet.errors import UsageError

    with pytest.raises(UsageError, match="--distill .*--weights .*--replay"):
        _trainer(tiny_data / "tiny.yaml", tmp_path / "a", encoder, epochs=1, max_steps=1, distill=1.0)
    r = _run([sys.executable, "-m", "promptdet.cli.main", "train", "--data", str(tiny_data / "tiny.yaml"), "--imgsz", "64",
              "--replay", str(tiny_data / "tiny.yaml"), "--distill", "1", "--out", str(tmp_path / "b")], tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "--distill keeps the starting model's answers" in r.stderr.strip().splitlines()[-1]


def test_distill_scores_only_the_replay_images_with_the_frozen_starting_model(tiny_data, tmp_path, encoder):
    import csv
    import shutil

    from promptdet.data.dataset import collate
    from promptdet.data.formats.jsonl import write_pairs
    from promptdet.data.pairs import InstructionPair
    from promptdet.train.validate import encode_prompt_grid

    base_run = _trainer(tiny_data / "tiny.yaml", tmp_path / "base", encoder, epochs=1, max_steps=1)
    base_run.train()
    start = {k: v.clone() for k, v in base_run.model.state_dict().items()}
    user = tmp_path / "user"
    user.mkdir()
    for name in ("000000.jpg", "000001.jpg"):
        shutil.copy(tiny_data / "train" / "images" / name, user / name)
    write_pairs([InstructionPair("000000.jpg", "find the widgets", [[1, 1, 60, 60]], "category"),
                 InstructionPair("000001.jpg", "find the widgets", [[30, 20, 150, 110]], "category")],
                user / "instructions.jsonl")
    args = {"epochs": 1, "max_steps": 2, "replay": str(tiny_data / "tiny.yaml"), "replay_ratio": 0.5, "distill": 1.0,
            "freeze_bn": True}
    from promptdet.train.trainer import TrainArgs, Trainer

    trainer = Trainer(TrainArgs(data=str(user), out=str(tmp_path / "ft"), **{**TINY, **args}), base_run.cfg,
                      init_weights=start, encoder=encoder)
    assert trainer.replay_from == 1
    # A batch of two user images and two replay images: the teacher sees the replay two only.
    user_idx = [i for i in range(len(trainer.train_set)) if trainer.train_set.source_of(i) == 0]
    replay_idx = [i for i in range(len(trainer.train_set)) if trainer.train_set.source_of(i) == 1]
    images, prompts, targets, _ = collate([trainer.train_set[i] for i in user_idx[:2] + replay_idx[:2]])
    assert targets.source.tolist() == [0, 0, 1, 1]
    x = images.float() / 255
    pooled, tokens, mask = encode_prompt_grid(encoder, prompts, "cpu")
    out, rows = trainer._teacher_answers(x, pooled, tokens, mask, targets, False, torch.float32)
    assert rows.tolist() == [False, False, True, True]
    with torch.no_grad():
        direct = trainer.teacher(x[2:], pooled[2:], tokens[2:], mask[2:])
    assert torch.equal(out.dense_logits, direct.dense_logits) and torch.equal(out.cand_logits, direct.cand_logits)
    only_user = collate([trainer.train_set[i] for i in user_idx[:2]])
    assert trainer._teacher_answers(x[:2], pooled[:2], tokens[:2], mask[:2], only_user[2], False, torch.float32) == \
        (None, None)

    trainer.train()
    # The teacher stayed the starting model, the loss was logged, and the checkpoint holds no teacher.
    assert all(torch.equal(v, start[k]) for k, v in trainer.teacher.state_dict().items())
    assert any(not torch.equal(v, start[k]) for k, v in trainer.model.state_dict().items() if v.is_floating_point())
    with (tmp_path / "ft" / "results.csv").open() as fh:
        assert float(next(csv.DictReader(fh))["train/distill"]) >= 0.0
    assert not any("teacher" in k for k in ckpt.load_checkpoint(tmp_path / "ft" / "last.safetensors")[0])
