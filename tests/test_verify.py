"""The crop verifier (promptdet.model.verify): a no-op when added, prompts stay independent, it
reads the crop, it trains alone with the rest frozen, and it exports to ONNX with parity."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from promptdet.config import ConfigError, ModelConfig, model_config_from_dict
from promptdet.model.detector import PromptDetector
from promptdet.model.verify import CropVerifier
from promptdet.train.loss import PromptDetLoss, PromptTargets

TEXT_DIM = 384


def prompts(k: int, t: int = 5, seed: int = 0, batch: int = 1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, k, t, dtype=torch.bool)
    mask[..., t - 1] = False
    return torch.randn(batch, k, TEXT_DIM, generator=g), torch.randn(batch, k, t, TEXT_DIM, generator=g), mask


def verifier_model(seed: int = 0, top_k: int = 4) -> PromptDetector:
    torch.manual_seed(seed)
    return PromptDetector(ModelConfig(imgsz=64, max_candidates=8, verify_top_k=top_k, verify_crop=16))


def test_added_to_a_trained_model_it_moves_a_logit_by_at_most_one_at_first():
    from promptdet.model.verify import INIT_GAIN

    torch.manual_seed(0)
    plain = PromptDetector(ModelConfig(imgsz=64, max_candidates=8)).eval()
    with_verifier = PromptDetector(ModelConfig(imgsz=64, max_candidates=8, verify_top_k=4, verify_crop=16)).eval()
    missing, unexpected = with_verifier.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("verifier.") for k in missing)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = plain(x, *prompts(3)), with_verifier(x, *prompts(3))
    assert torch.equal(a.cand_idx, b.cand_idx)  # the verifier comes after the candidates are chosen
    change = (a.cand_logits - b.cand_logits).abs()
    assert 0 < change.max() <= INIT_GAIN * 10 + 1e-5


def test_only_the_top_candidates_move_and_invalid_ones_stay_out():
    model = verifier_model(top_k=3).eval()
    torch.nn.init.normal_(model.verifier.gain_offset.weight, std=0.5)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        model.verifier, verifier = None, model.verifier
        base = model(x, *prompts(2))
        model.verifier = verifier
        out = model(x, *prompts(2))
    top = base.cand_logits.topk(3, dim=2).indices
    moved = (out.cand_logits != base.cand_logits)
    assert moved.sum() > 0
    rest = torch.ones_like(moved).scatter(2, top, False)
    assert not (moved & rest).any()  # outside the top 3 nothing changes
    assert (out.cand_logits[~out.cand_valid] < -1e3).all()


def test_the_score_depends_on_what_is_in_the_crop():
    """Two images that differ only inside one candidate's box: that candidate's delta differs."""
    v = CropVerifier(TEXT_DIM, 32, top_k=1, crop=16).eval()
    torch.nn.init.normal_(v.gain_offset.weight, std=0.5)
    boxes = torch.tensor([[[8.0, 8.0, 24.0, 24.0]], [[8.0, 8.0, 24.0, 24.0]]])  # [B=2, A=1, 4]
    cand_idx = torch.zeros(2, 1, 1, dtype=torch.long)  # [B, K=1, M=1]: the one anchor
    images = torch.rand(1, 3, 40, 40).repeat(2, 1, 1, 1)
    images[1, :, 12:20, 12:20] = 0.0  # a dark mark inside the box of image 1 only
    pooled, tokens, mask = prompts(1)
    with torch.no_grad():
        out = v(images, boxes, cand_idx, torch.zeros(2, 1, 1), pooled, tokens, mask)
        far = images.clone()
        far[:, :, 34:, 34:] = 1.0  # a change well outside the box (and its context margin)
        out_far = v(far, boxes, cand_idx, torch.zeros(2, 1, 1), pooled, tokens, mask)
    assert (out[0] - out[1]).abs().max() > 1e-4
    assert torch.allclose(out, out_far, atol=1e-6)


def test_prompts_stay_independent_with_the_verifier():
    model = verifier_model(seed=1).eval()
    torch.nn.init.normal_(model.reasoner.out.weight, std=0.05)
    torch.nn.init.normal_(model.verifier.gain_offset.weight, std=0.5)
    torch.nn.init.normal_(model.verifier.prompt.words.out.weight, std=0.05)
    x = torch.rand(1, 3, 64, 64)
    pooled, tokens, mask = prompts(4, t=7, seed=3)
    with torch.no_grad():
        full = model(x, pooled, tokens, mask)
        alone = model(x, pooled[:, 2:3], tokens[:, 2:3, :6], mask[:, 2:3, :6])
        order = [3, 1, 0, 2]
        shuffled = model(x, pooled[:, order], tokens[:, order], mask[:, order])
    assert torch.equal(full.cand_idx[:, 2], alone.cand_idx[:, 0])
    assert (full.cand_logits[:, 2] - alone.cand_logits[:, 0]).abs().max() < 1e-4
    for new_pos, old_pos in enumerate(order):
        assert (full.cand_logits[:, old_pos] - shuffled.cand_logits[:, new_pos]).abs().max() < 1e-4


def test_forward_backward_without_nan_and_the_gradient_reaches_the_crop_cnn():
    model = verifier_model().train()
    torch.nn.init.normal_(model.verifier.gain_offset.weight, std=0.5)
    out = model(torch.rand(2, 3, 64, 64), *prompts(3, batch=2))
    boxes = torch.zeros(2, 3, 1, 4)
    boxes[:, 0, 0] = torch.tensor([8.0, 10.0, 30.0, 40.0])
    mask = torch.zeros(2, 3, 1, dtype=torch.bool)
    mask[:, 0, 0] = True
    t = PromptTargets(boxes, mask, boxes.clone(), mask.clone(), torch.ones(2, 3, dtype=torch.bool))
    loss, items = PromptDetLoss(1)(out, t, (64, 64))
    loss.backward()
    assert torch.isfinite(loss) and all(math.isfinite(float(v)) for v in items.values()), items
    grad = model.verifier.cnn[0].conv.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_loss_without_the_dense_stage_has_no_box_terms_and_still_trains_the_verifier():
    model = verifier_model()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("verifier."))
    torch.nn.init.normal_(model.verifier.gain_offset.weight, std=0.5)
    out = model.train()(torch.rand(1, 3, 64, 64), *prompts(2))
    boxes = torch.tensor([[[[8.0, 10.0, 30.0, 40.0]], [[0.0, 0.0, 0.0, 0.0]]]])
    mask = torch.tensor([[[True], [False]]])
    t = PromptTargets(boxes, mask, boxes.clone(), mask.clone(), torch.ones(1, 2, dtype=torch.bool))
    loss, items = PromptDetLoss(1)(out, t, (64, 64))
    assert items["box"] == items["cls"] == items["dfl"] == 0.0 and items["reason"] > 0
    loss.backward()
    assert model.verifier.gain_offset.weight.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("verifier."))


@pytest.mark.parametrize("data, message", [
    ({"verify_top_k": 60, "max_candidates": 48}, "verify_top_k must be from 0"),
    ({"verify_top_k": -1}, "verify_top_k must be from 0"),
    ({"verify_top_k": 8, "verify_crop": 20}, "verify_crop must be a multiple of 8"),
])
def test_bad_verifier_config(data, message):
    with pytest.raises(ConfigError, match=message):
        model_config_from_dict(data, "cfg.yaml")


@pytest.fixture(scope="module")
def exported_verifier(save_tiny_checkpoint, tmp_path_factory):
    import promptdet
    from promptdet.export.onnx import export_model

    model = verifier_model(seed=2)
    for bn in model.modules():  # distinct scores, as in test_export's tiny model
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.reset_running_stats()
            bn.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(4, 3, 64, 64), *prompts(1))
    model.eval()
    model.similarity.logit_scale.data.fill_(4.6)
    for seq in model.head.box:
        seq[-1].weight.data *= 0.01
    torch.nn.init.normal_(model.verifier.gain_offset.weight, std=0.3)
    out = tmp_path_factory.mktemp("export") / "verify"
    loaded = promptdet.load(save_tiny_checkpoint(model))
    meta = export_model(loaded, out, dynamic=True, bake_prompts="red bottle;a scratched nut", log=lambda _line: None)
    return out, meta, loaded


@pytest.mark.parametrize("size,k", [(64, 1), (96, 5), (64, 0)])
def test_the_verifier_exports_with_parity(exported_verifier, size, k):
    """Dynamic sizes, one and five prompts, and none: RoIAlign in the graph matches torch."""
    from promptdet.export.graphs import DetectorGraph
    from promptdet.export.verify import compare_candidates
    from promptdet.runtime.onnx import OnnxModel

    out, meta, model = exported_verifier
    assert all(c["score_diff"] < 1e-4 for c in meta["parity"]["cases"])
    onnx_model = OnnxModel(out, providers="cpu")
    x = np.random.default_rng(k).random((1, 3, size, size), dtype=np.float32)
    pooled, tokens, mask = (t[0] for t in prompts(k, seed=k))
    with torch.no_grad():
        ref_b, ref_s = DetectorGraph(model.detector.eval())(torch.from_numpy(x), pooled, tokens, mask)[:2]
    boxes, scores = onnx_model.run(x, pooled.numpy(), tokens.numpy(), mask.numpy())
    assert scores.shape == tuple(ref_s.shape) == (1, k, 8)
    if k:
        box_diff, score_diff = compare_candidates(boxes, scores, ref_b.numpy(), ref_s.numpy(), 1e-4)
        assert box_diff < 1e-3 * size and score_diff < 1e-4


def test_the_baked_graph_with_the_verifier_gives_the_same_scores(exported_verifier):
    from promptdet.runtime.onnx import OnnxModel

    out, _, model = exported_verifier
    img = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    prompts_ = ["red bottle", "a scratched nut"]
    free = OnnxModel(out, providers="cpu").detect(img, prompts=prompts_, conf=0.01)
    baked = OnnxModel(out, providers="cpu", detector_file="detector_baked.onnx").detect(img, conf=0.01)
    in_torch = model.detect(img, prompts=prompts_, conf=0.01)
    assert len(free.scores) > 0
    for other in (baked, in_torch):
        assert len(other.scores) == len(free.scores)
        assert np.allclose(np.sort(other.scores), np.sort(free.scores), atol=1e-4)


def test_crop_defect_probe_reads_the_kind_from_the_crop_and_trains_the_cnn():
    from promptdet.train.loss import CropDefectProbe

    verifier = CropVerifier(TEXT_DIM, 32, top_k=2, crop=16).train()
    probe = CropDefectProbe(32, 3)
    images = torch.rand(2, 3, 40, 40)
    boxes = torch.tensor([[[4.0, 4.0, 20.0, 20.0], [0.0, 0.0, 0.0, 0.0]], [[10.0, 8.0, 30.0, 36.0], [2.0, 2.0, 12.0, 12.0]]])
    kinds = torch.tensor([[2, -1], [0, 1]])  # -1: padding, ignored
    loss = probe(verifier, images, boxes, kinds)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert verifier.cnn[0].conv.weight.grad.abs().sum() > 0
    none = probe(verifier, images, boxes, torch.full_like(kinds, -1))
    assert none.item() == 0.0
