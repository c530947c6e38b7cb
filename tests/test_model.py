"""The detector at tiny size: every scale trains without NaN, prompts are independent, the loss
learns a tiny set, and a locally made YOLO26 state_dict starts the backbone."""

from __future__ import annotations

import math

import pytest
import torch

from promptdet.config import ConfigError, ModelConfig, model_config_from_dict
from promptdet.errors import PromptdetError
from promptdet.model.detector import PromptDetector
from promptdet.model.postprocess import candidate_boxes_scores, nms_per_prompt
from promptdet.train.loss import PromptDetLoss, PromptTargets

TEXT_DIM = 384


def prompts(k: int, t: int = 5, seed: int = 0, batch: int = 1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, k, t, dtype=torch.bool)
    mask[..., t - 1] = False  # a padded word position
    return torch.randn(batch, k, TEXT_DIM, generator=g), torch.randn(batch, k, t, TEXT_DIM, generator=g), mask


def targets(b: int, k: int) -> PromptTargets:
    boxes = torch.zeros(b, k, 2, 4)
    mask = torch.zeros(b, k, 2, dtype=torch.bool)
    boxes[:, 0, 0] = torch.tensor([8.0, 10.0, 30.0, 40.0])
    boxes[:, 1, :] = torch.tensor([[8.0, 10.0, 30.0, 40.0], [36.0, 30.0, 60.0, 58.0]])  # one box answers two prompts
    mask[:, 0, 0] = True
    mask[:, 1, :] = True  # prompt 2 (index 2) is absent: no boxes
    return PromptTargets(boxes, mask, boxes.clone(), mask.clone(), torch.ones(b, k, dtype=torch.bool))


@pytest.mark.parametrize("scale, reg_max", [("n", 1), ("n", 16), ("s", 1)])
def test_every_scale_forward_backward_without_nan(scale, reg_max):
    torch.manual_seed(0)
    model = PromptDetector(ModelConfig(scale=scale, reg_max=reg_max, imgsz=64, max_candidates=16)).train()
    x = torch.rand(2, 3, 64, 64)
    out = model(x, *prompts(3, batch=2))
    a = 8 * 8 + 4 * 4 + 2 * 2
    assert out.dense_logits.shape == (2, 3, a) and out.boxes_xyxy.shape == (2, a, 4)
    assert out.cand_logits.shape == (2, 3, 16) and out.box_dist.shape == (2, a, 4 * reg_max)
    loss, items = PromptDetLoss(reg_max)(out, targets(2, 3), (64, 64))
    loss.backward()
    assert torch.isfinite(loss) and all(math.isfinite(float(v)) for v in items.values()), items
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("word_pool_heads", [0, 4])
def test_prompts_are_independent_in_eval_mode(word_pool_heads):
    torch.manual_seed(1)
    model = PromptDetector(ModelConfig(imgsz=64, max_candidates=16, word_pool_heads=word_pool_heads)).eval()
    torch.nn.init.normal_(model.reasoner.out.weight, std=0.05)  # zero-initialised: give words a real effect
    if word_pool_heads:
        torch.nn.init.normal_(model.text_proj.words.out.weight, std=0.05)
    x = torch.rand(1, 3, 64, 64)
    pooled, tokens, mask = prompts(4, t=7, seed=3)
    with torch.no_grad():
        full = model(x, pooled, tokens, mask)
        alone = model(x, pooled[:, 1:2], tokens[:, 1:2, :6], mask[:, 1:2, :6])  # less padding too
        order = [3, 1, 0, 2]
        shuffled = model(x, pooled[:, order], tokens[:, order], mask[:, order])

    def final(out, k):
        dense = torch.zeros(out.boxes_xyxy.shape[1])
        valid = out.cand_valid[0, k]
        return dense.index_put((out.cand_idx[0, k][valid],), out.cand_logits[0, k][valid].sigmoid())

    assert (final(full, 1) - final(alone, 0)).abs().max() < 1e-4
    for new_pos, old_pos in enumerate(order):
        assert (final(full, old_pos) - final(shuffled, new_pos)).abs().max() < 1e-4
    assert (full.dense_logits[0, 1] - alone.dense_logits[0, 0]).abs().max() < 1e-4


def test_word_pooling_starts_as_the_identity_and_reads_the_words():
    """Added to a trained model it changes nothing at first; once trained, a changed word moves the vector."""
    from promptdet.model.head import TextProjection

    torch.manual_seed(2)
    plain, pooled_words = TextProjection(TEXT_DIM, 32).eval(), TextProjection(TEXT_DIM, 32, word_pool_heads=2).eval()
    pooled_words.load_state_dict(plain.state_dict(), strict=False)
    pooled, tokens, mask = prompts(3, t=6)
    assert torch.equal(plain(pooled, tokens)[0], pooled_words(pooled, tokens, mask)[0])
    torch.nn.init.normal_(pooled_words.words.out.weight, std=0.1)
    base = pooled_words(pooled, tokens, mask)[0]
    changed = tokens.clone()
    changed[0, 0, 2] += 1.0  # another word in prompt 0 only
    moved = pooled_words(pooled, changed, mask)[0]
    assert (moved[0, 0] - base[0, 0]).abs().max() > 1e-4
    assert torch.equal(moved[0, 1:], base[0, 1:])
    padded = tokens.clone()
    padded[0, 0, -1] += 100.0  # a padded position is ignored
    assert torch.allclose(pooled_words(pooled, padded, mask)[0], base, atol=1e-6)


def test_forward_is_the_same_in_train_and_eval_structure():
    model = PromptDetector(ModelConfig(imgsz=64, max_candidates=8))
    x = torch.rand(1, 3, 64, 64)
    train_out = model.train()(x, *prompts(2))
    eval_out = model.eval()(x, *prompts(2))
    for name in ("box_dist", "boxes_xyxy", "dense_logits", "cand_idx", "cand_logits"):
        assert getattr(train_out, name).shape == getattr(eval_out, name).shape


def test_loss_decreases_on_a_tiny_overfit_set():
    torch.manual_seed(0)
    model = PromptDetector(ModelConfig(imgsz=64, max_candidates=16)).train()
    loss_fn = PromptDetLoss(1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.rand(2, 3, 64, 64)
    p, t = prompts(3, batch=2), targets(2, 3)
    losses = []
    for _ in range(25):
        loss, _ = loss_fn(model(x, *p), t, (64, 64))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_postprocess_keeps_prompts_apart():
    boxes = torch.tensor([[[[0, 0, 10, 10], [1, 1, 10, 10]], [[0, 0, 10, 10], [50, 50, 60, 60]]]], dtype=torch.float)
    scores = torch.tensor([[[0.9, 0.8], [0.7, 0.1]]])
    (b, s, ids), = nms_per_prompt(boxes, scores, conf=0.25, iou=0.5)
    # prompt 0's near-duplicate is suppressed, prompt 1's identical box is not; 0.1 is below conf
    assert sorted(zip(ids.tolist(), s.tolist())) == [(0, pytest.approx(0.9)), (1, pytest.approx(0.7))]
    (b, s, ids), = nms_per_prompt(boxes, torch.zeros(1, 2, 2), conf=0.25)
    assert len(b) == 0


def test_candidate_boxes_match_anchor_boxes():
    model = PromptDetector(ModelConfig(imgsz=64, max_candidates=8)).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64), *prompts(2))
    boxes, scores = candidate_boxes_scores(out)
    assert boxes.shape == (2, 2, 8, 4) and scores.shape == (2, 2, 8)
    assert torch.equal(boxes[1, 1, 3], out.boxes_xyxy[1, out.cand_idx[1, 1, 3]])


def test_candidates_keep_their_count_on_inputs_with_fewer_anchors():
    """M is max_candidates at every size (a dynamic ONNX graph bakes M in); the padding is never a candidate."""
    from promptdet.model.fusion import select_peaks

    logits = torch.tensor([[3.0, 1.0, 2.0, 0.5]])  # one 2x2 level: 4 anchors, one local maximum
    idx, valid = select_peaks(logits, [(2, 2)], max_candidates=6)
    assert idx.shape == valid.shape == (1, 6)
    assert idx[0, 0] == 0 and valid[0].tolist() == [True] + [False] * 5
    assert (idx >= 0).all() and (idx < 4).all()  # the padding points at a real anchor, so gathers stay in range
    model = PromptDetector(ModelConfig(imgsz=64, max_candidates=300)).eval()  # 84 anchors at 64 px
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64), *prompts(2))
    boxes, scores = candidate_boxes_scores(out)
    assert scores.shape == (1, 2, 300) and boxes.shape == (1, 2, 300, 4)
    assert int(out.cand_valid.sum(-1).max()) <= 84 and float(scores[~out.cand_valid].max()) == 0.0


def test_backbone_starts_from_a_local_yolo26_state_dict(tmp_path):
    from ultralytics.nn.tasks import DetectionModel

    from promptdet.api import load_ultralytics_backbone

    yolo = DetectionModel("yolo26n.yaml", nc=8, verbose=False)
    torch.save(yolo.state_dict(), tmp_path / "yolo26n_state.pt")
    mapped = load_ultralytics_backbone(tmp_path / "yolo26n_state.pt")
    model = PromptDetector(ModelConfig(scale="n"))
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    assert not unexpected
    ours = model.state_dict()
    assert all(k.startswith(("head.", "text_proj.", "similarity.", "reasoner.")) for k in missing)
    assert len(mapped) > 100
    for key, value in mapped.items():
        assert torch.equal(ours[key], value), key

    torch.save(yolo, tmp_path / "full.pt")  # a pickled module: refused, never unpickled
    with pytest.raises(PromptdetError, match="not a plain state_dict.*FILE_state.pt"):
        load_ultralytics_backbone(tmp_path / "full.pt")


@pytest.mark.parametrize("data, message", [
    ({"scale": "xl"}, "unknown scale"), ({"embed_dim": 130}, "divisible"), ({"imgsz": 100}, "multiple of 32"),
    ({"scael": "n"}, "did you mean 'scale'"), ({"embed_dim": "big"}, "expected an integer"),
])
def test_bad_model_config(data, message):
    with pytest.raises(ConfigError, match=message):
        model_config_from_dict(data, "cfg.yaml")


def test_candidate_boxes_are_valid_xyxy_even_when_a_side_is_negative():
    from promptdet.model.detector import DetectorOutput

    raw = torch.tensor([[[10.0, 10.0, 5.0, 20.0], [0.0, 0.0, 4.0, 4.0]]])  # first box has x2 < x1
    out = DetectorOutput(torch.zeros(1, 2, 4), raw, torch.zeros(1, 1, 2), torch.tensor([[[0, 1]]]),
                         torch.zeros(1, 1, 2), torch.ones(1, 1, 2, dtype=torch.bool), torch.zeros(2, 2), torch.ones(2, 1),
                         torch.zeros(1, 2, 8), torch.ones(1), torch.ones(1, 1))
    boxes, _ = candidate_boxes_scores(out)
    assert torch.equal(boxes[0, 0, 0], torch.tensor([5.0, 10.0, 10.0, 20.0]))
    assert (boxes[..., 2:] >= boxes[..., :2]).all()
