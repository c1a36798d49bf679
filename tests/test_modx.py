"""Mod-X: the row filter, the filtered KL (value, gradient, reduction), the contrastive task loss,
the logit-scale clamp, the plugin on a real model and a short end-to-end run."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from numerics import kl_rounding, sum_rounding
from continual.clip.backbone import create_model
from continual.clip.heads import ClipClassifier, prompts
from strategies.modx import (ModXParams, ModXPlugin, alignment_loss, clip_contrastive_loss, filtered_kl,
                             old_model_correct, similarity)


def cosines(n: int, seed: int, diagonal: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(n, n, generator=g, dtype=torch.float64) - 0.5
    return (s + diagonal * torch.eye(n, dtype=torch.float64)).clamp(-1, 1)


def test_zero_when_student_is_teacher_positive_otherwise():
    s_old = cosines(6, 0, diagonal=1.0)
    assert alignment_loss(s_old.clone(), s_old).item() == 0.0  # exact: equal inputs, equal log-softmaxes
    moved = s_old + 0.2 * cosines(6, 1)
    assert alignment_loss(moved, s_old).item() > 1e-4


def test_row_filter_is_argmax_and_duplicates_of_the_label_count_as_right():
    s_old = torch.tensor([[0.9, 0.1, 0.0, 0.0],
                          [0.8, 0.7, 0.0, 0.0],   # argmax 0: another image's caption
                          [0.0, 0.0, 0.1, 0.5],   # argmax 3
                          [0.0, 0.9, 0.0, 0.2]])  # argmax 1
    assert old_model_correct(s_old).tolist() == [True, False, False, False]
    # classification batch: captions 0,1 are class 7's, captions 2,3 class 4's (duplicates)
    labels = torch.tensor([7, 7, 4, 4])
    assert old_model_correct(s_old, labels).tolist() == [True, True, True, False]


def test_a_row_the_old_model_gets_wrong_contributes_nothing():
    s_old = cosines(5, 2, diagonal=1.0)
    s_old[3] = torch.tensor([0.9, 0.0, 0.0, 0.1, 0.0], dtype=torch.float64)  # row 3: old model wrong
    s = cosines(5, 3)
    keep = old_model_correct(s_old)
    assert keep.tolist() == [True, True, True, False, True]
    base = filtered_kl(s, s_old, keep).item()
    changed = s.clone()
    changed[3] = torch.tensor([5.0, -3.0, 2.0, 0.0, 7.0])  # anything
    assert filtered_kl(changed, s_old, keep).item() == base  # exact: the kept rows' values are the same
    changed = s.clone()
    changed[2, 0] += 0.5  # a kept row does count
    assert filtered_kl(changed, s_old, keep).item() != pytest.approx(base, rel=1e-6)
    # text -> image: caption 3 (column 3) where the transposed old row is wrong
    s_old_t = s_old.clone()
    s_old_t[:, 1] = torch.tensor([0.0, 0.2, 0.0, 0.9, 0.0], dtype=torch.float64)  # caption 1 retrieves image 3
    assert not old_model_correct(s_old_t.t())[1]
    changed = s.clone()
    changed[:, 1] = torch.linspace(-1, 1, 5, dtype=torch.float64)
    t2i = lambda m: filtered_kl(m.t(), s_old_t.t(), old_model_correct(s_old_t.t())).item()  # noqa: E731
    assert t2i(changed) == t2i(s)


def test_filtered_kl_is_the_sum_of_kl_divergences_of_kept_rows():
    s_old, s = cosines(5, 4, diagonal=1.0), cosines(5, 5)
    keep = torch.tensor([True, False, True, True, False])
    expected = sum(F.kl_div(F.log_softmax(s[i], -1), F.log_softmax(s_old[i], -1), reduction="sum", log_target=True)
                   for i in range(5) if keep[i])
    assert filtered_kl(s, s_old, keep).item() == pytest.approx(expected.item(), rel=1e-12)
    both = alignment_loss(s, s_old)
    i2t = filtered_kl(s, s_old, old_model_correct(s_old))
    t2i = filtered_kl(s.t(), s_old.t(), old_model_correct(s_old.t()))
    assert both.item() == pytest.approx(((i2t + t2i) / 2).item(), rel=1e-12)


def test_sum_and_mean_reductions():
    s_old, s = cosines(8, 6, diagonal=0.6), cosines(8, 7)
    keep = old_model_correct(s_old)
    assert 0 < keep.sum() < 8  # some rows dropped: mean is over the batch, not the kept rows
    total = filtered_kl(s, s_old, keep, "sum")
    assert filtered_kl(s, s_old, keep, "mean").item() == pytest.approx(total.item() / 8, rel=1e-12)
    assert alignment_loss(s, s_old, reduction="mean").item() == pytest.approx(
        alignment_loss(s, s_old, reduction="sum").item() / 8, rel=1e-12)
    with pytest.raises(ValueError):
        filtered_kl(s, s_old, keep, "batchmean")


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_gradient_matches_finite_differences(reduction):
    s_old = cosines(6, 8, diagonal=0.8)
    labels = torch.tensor([0, 0, 1, 2, 2, 3])
    s = cosines(6, 9).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda m: alignment_loss(m, s_old, labels, reduction), (s,))
    # and through the cosines, w.r.t. the student's features
    g = torch.Generator().manual_seed(10)
    image = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    text = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda i, t: alignment_loss(similarity(i, t), s_old, labels, reduction), (image, text))


def test_contrastive_loss_matches_open_clip_and_needs_no_labels_for_duplicate_captions():
    from open_clip.loss import ClipLoss

    g = torch.Generator().manual_seed(11)
    image, text = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    expected = ClipLoss()(F.normalize(image, dim=-1), F.normalize(text, dim=-1), torch.tensor(20.0))
    assert clip_contrastive_loss(image, text, 20.0).item() == pytest.approx(expected.item(), rel=1e-5)
    # a classification batch: images of classes [0, 0, 1, 0, 2, 1], captions = their class's
    labels = torch.tensor([0, 0, 1, 0, 2, 1])
    captions = text[:3][labels]
    same = (labels[:, None] == labels[None, :]).float()
    soft = same / same.sum(1, keepdim=True)  # every same-class caption/image is a positive
    logits = 20.0 * F.normalize(image, dim=-1) @ F.normalize(captions, dim=-1).t()
    spread = (F.cross_entropy(logits, soft) + F.cross_entropy(logits.t(), soft)) / 2
    assert clip_contrastive_loss(image, captions, 20.0).item() == pytest.approx(spread.item(), rel=1e-5)


# -- the plugin on a real (tiny) CLIP model --------------------------------------------------------
NAMES = ["zero", "one", "two", "three"]


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model, _, tokenizer = create_model("tiny-vit")
    return ClipClassifier(model, NAMES, tokenizer(prompts(NAMES, ["a photo of the digit {}.", "the number {}"])), 2)


def test_plugin_term_is_zero_at_session_start_then_positive(tiny):
    plugin = ModXPlugin(ModXParams())
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 64, 64, generator=g), torch.tensor([0, 1, 2, 3] * 2)
    strategy = SimpleNamespace(model=tiny, experience=None, mb_x=x, mb_y=y, loss=torch.zeros(()))
    plugin.before_training_exp(strategy)
    plugin.before_backward(strategy)
    # student = teacher: zero up to the rounding of a KL between two float32 softmaxes over the
    # batch's 8 raw cosines (|S| <= 1) on 8 rows (exactly zero where both run the same kernels)
    at_start = kl_rounding(rows=8, n=8, logit_bound=1.0)
    assert abs(plugin.last_value) <= at_start and abs(strategy.loss.item()) <= 20.0 * at_start
    # the teacher's captions are the template means of the class prompts: unit rows, equal up to
    # the rounding of the text tower's 4 layers of 128-wide products
    with torch.no_grad():
        feats = F.normalize(plugin.teacher().encode_text(tiny.text_inputs), dim=-1).view(4, 2, -1).mean(1)
    assert (plugin.old_class_features - F.normalize(feats, dim=-1)).norm(dim=1).max() <= 4 * sum_rounding(128, 1.0)
    with torch.no_grad():
        tiny.model.visual.proj.add_(0.2 * torch.randn_like(tiny.model.visual.proj))
    strategy.loss = torch.zeros(())
    plugin.before_backward(strategy)
    kept = sum(plugin.last_kept)
    assert kept > 0 and plugin.last_value > 4 * at_start  # beyond rounding
    assert strategy.loss.item() == pytest.approx(20.0 * plugin.last_value, rel=1e-6)
    strategy.loss.backward()
    assert tiny.model.visual.proj.grad.abs().max() > 0
    assert all(p.grad is None and not p.requires_grad for p in plugin.teacher().parameters())


def test_logit_scale_is_clamped_after_a_step_when_it_trains(tiny):
    plugin = ModXPlugin()
    strategy = SimpleNamespace(model=tiny)
    with torch.no_grad():
        tiny.model.logit_scale.fill_(6.0)
    plugin.after_update(strategy)
    assert tiny.model.logit_scale.item() == pytest.approx(math.log(100))
    with torch.no_grad():
        tiny.model.logit_scale.fill_(-1.0)
    plugin.after_update(strategy)
    assert tiny.model.logit_scale.item() == 0.0
    tiny.model.logit_scale.requires_grad_(False)  # frozen: left alone
    with torch.no_grad():
        tiny.model.logit_scale.fill_(6.0)
    plugin.after_update(strategy)
    assert tiny.model.logit_scale.item() == 6.0


def test_params_are_validated():
    from continual.errors import ConfigError

    with pytest.raises(ConfigError, match="strategy.reduction"):
        ModXParams(reduction="batchmean")
    with pytest.raises(ConfigError, match="strategy.teacher"):
        ModXParams(teacher="best")


# -- end to end -----------------------------------------------------------------------------------
def test_short_run_through_the_runner(tmp_path, make_config, monkeypatch):
    from mlflow import MlflowClient

    from continual.run.loop import run

    seen = []
    original = ModXPlugin.before_backward

    def recording(self, strategy, **kwargs):
        original(self, strategy, **kwargs)
        seen.append((strategy.experience.current_experience, strategy.clock.train_exp_iterations, self.last_value))

    monkeypatch.setattr(ModXPlugin, "before_backward", recording)
    cfg = make_config(tmp_path, "strategy.name=modx", "strategy.contrastive_weight=0.5", "control.name=null")
    result = run(cfg, echo=lambda s: None, progress=False)
    assert MlflowClient(result.tracking_uri).get_run(result.run_id).info.status == "FINISHED"
    first = [v for session, it, v in seen if it == 0]
    later = [v for session, it, v in seen if it > 0 and session == 1]
    assert first == [0.0, 0.0]  # student = teacher at the start of each session
    assert max(later) > 0
    assert result.accuracy[1, 0] > result.accuracy[0, 0] + 20
