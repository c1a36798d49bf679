"""Reuse outside our runner: VR-LwF and Mod-X as plain plugins of Avalanche's stock ``Naive``
strategy, on a benchmark made by Avalanche's own generator (``class_incremental_benchmark``) over scikit-learn
digits, with an open_clip model (the tiny ViT CLIP) wrapped as a ClipClassifier."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from avalanche.core import SupervisedPlugin
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin
from sklearn.datasets import load_digits
from torch.distributions import Categorical
from torch.utils.data import TensorDataset

from numerics import eps, kl_rounding, sum_rounding

from continual.clip.backbone import create_model
from continual.context import StrategyContext
from continual.clip.heads import ClipClassifier, logit_scale, prompts
from strategies.modx import ModXParams, ModXPlugin
from strategies.vrlwf import VRLwFParams, VRLwFPlugin

NAMES = ["zero", "one", "two", "three"]


class Digits(TensorDataset):
    """Images and labels, with the ``targets`` Avalanche's generators read."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        super().__init__(x, y)
        self.targets = y.tolist()


@pytest.fixture(scope="module")
def digits_stream():
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16
    y = torch.tensor(digits.target)
    keep = torch.cat([torch.nonzero(y == c)[:24, 0] for c in range(4)])  # 24 per class
    x = F.interpolate(x[keep], size=64).repeat(1, 3, 1, 1)  # the tiny ViT's 64 px RGB
    data = Digits(x, y[keep])
    return class_incremental_benchmark({"train": data, "test": data}, class_order=[0, 1, 2, 3], num_experiences=2)


def tiny_clip():
    torch.manual_seed(0)
    model, _, tokenizer = create_model("tiny-vit")
    classifier = ClipClassifier(model, NAMES, tokenizer(prompts(NAMES, ["a photo of the digit {}."])), 1)
    return classifier, StrategyContext(encode_texts=tokenizer, tokenizer=tokenizer)


class Probe(SupervisedPlugin):
    """Runs after the method's plugin: what did it add to Avalanche's loss?"""

    def __init__(self, method: SupervisedPlugin, weight: float) -> None:
        super().__init__()
        self.method, self.weight, self.steps = method, weight, []

    def before_backward(self, strategy, **kwargs) -> None:
        task = F.cross_entropy(strategy.mb_output, strategy.mb_y)  # Naive's criterion
        self.steps.append({
            "session": strategy.experience.current_experience,
            "iteration": strategy.clock.train_exp_iterations,
            "added": (strategy.loss - task).item(),
            "loss": strategy.loss.item(),
            "term": self.method.last_value,
            "entropy": self.teacher_entropy(strategy),
        })

    def teacher_entropy(self, strategy) -> float | None:
        """VR-LwF's value at student = teacher, computed independently of its loss code."""
        vocab = getattr(self.method, "vocabulary", None)
        if not isinstance(vocab, torch.Tensor):  # Mod-X, or a vocabulary of sentences
            return None
        teacher = self.method.teacher()
        with torch.no_grad():
            u = F.normalize(teacher.encode_text(vocab), dim=-1)
            z = logit_scale(teacher) * F.normalize(teacher.encode_image(strategy.mb_x), dim=-1) @ u.t()
            rows, cols = Categorical(logits=z / 2).entropy(), Categorical(logits=z.t() / 2).entropy()
            return float(4 * (rows.mean() + cols.mean()))  # T^2 (H_rows + H_cols), T = 2


def train(plugin: SupervisedPlugin, classifier: ClipClassifier, digits_stream, weight: float) -> Probe:
    probe = Probe(plugin, weight)
    optimizer = torch.optim.Adam([p for p in classifier.parameters() if p.requires_grad], lr=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        strategy = Naive(model=classifier, optimizer=optimizer, train_mb_size=16, train_epochs=1,
                         plugins=[plugin, probe], evaluator=EvaluationPlugin(loggers=[]))
    for experience in digits_stream.train_stream:
        strategy.train(experience)
    return probe


def added_rounding(step: dict) -> float:
    """Error of ``loss - CE`` read back from ``loss = CE + weight * term`` in float32: the sum and the
    difference each round by eps of the loss, the product by eps of the added term."""
    return 2 * eps() * abs(step["loss"]) + eps() * abs(step["added"])


def snapshot(classifier: ClipClassifier) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in classifier.model.named_parameters()}


def changed(before: dict[str, torch.Tensor], classifier: ClipClassifier) -> bool:
    return any(not torch.equal(before[n], p) for n, p in classifier.model.named_parameters())


def test_vrlwf_as_a_plugin_of_avalanche_naive(digits_stream):
    classifier, context = tiny_clip()
    before = snapshot(classifier)
    plugin = VRLwFPlugin(VRLwFParams(vocab_size=64), context)
    probe = train(plugin, classifier, digits_stream, weight=1.0)  # lambda = 1, the default
    assert changed(before, classifier)
    assert [s["session"] for s in probe.steps] == [0] * 3 + [1] * 3  # 48 images per session, batch 16
    for step in probe.steps:  # Avalanche's loss = CE + lambda * L_VR, every iteration
        assert step["added"] == pytest.approx(probe.weight * step["term"], abs=added_rounding(step))
    # at each session's first step the student is the teacher: the teacher's entropy term, up to
    # the rounding of two float32 computations of it (other formulas and kernels): a sum over the
    # 64-word vocabulary and the 16-image batch of terms of size <= |log p| <= the logit range
    for step in probe.steps:
        if step["iteration"] == 0:
            assert step["term"] == pytest.approx(step["entropy"], rel=sum_rounding(64 * 16, 10.0))
    later = probe.steps[1]
    assert later["term"] > later["entropy"] * (1 + 1e-6)  # the student moved: CE above entropy


def test_modx_as_a_plugin_of_avalanche_naive(digits_stream):
    classifier, _ = tiny_clip()
    before = snapshot(classifier)
    plugin = ModXPlugin(ModXParams())
    probe = train(plugin, classifier, digits_stream, weight=20.0)
    assert changed(before, classifier)
    for step in probe.steps:
        assert step["added"] == pytest.approx(20.0 * step["term"], abs=added_rounding(step))
    first = [s["term"] for s in probe.steps if s["iteration"] == 0]
    # student = teacher at each session's start: zero up to the rounding of a KL between float32
    # softmaxes of 16 raw cosines on 16 rows (the student encodes only the batch's captions, the
    # teacher all classes at once: other matrix shapes, other kernels)
    at_start = kl_rounding(rows=16, n=16, logit_bound=1.0)
    assert all(abs(term) <= at_start for term in first) and len(first) == 2
    assert all(s["term"] > at_start for s in probe.steps if s["iteration"] > 0)
    # the logit scale trains here; Mod-X keeps it in [0, ln 100]
    assert classifier.model.logit_scale.requires_grad and 0 <= classifier.model.logit_scale.item() <= 4.6052
