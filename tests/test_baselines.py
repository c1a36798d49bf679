"""The baselines of METHODS.md section 4: LwF, WiSE-FT, ZSCL and joint training.

Properties on a toy CLIP model (fast), then short real runs through ``continual.run.loop.run``
on the digits experiment of ``make_config`` (all in one MLflow store, to build it once).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from avalanche.core import SupervisedPlugin
from torch import nn

from numerics import (gradient_at_rounding, kd_gradient_rounding, probability_displacement, softmax_rounding,
                      sum_rounding)
from continual.errors import ConfigError
from continual.clip.heads import ClipClassifier
from continual.run.loop import run
from continual.stream import ControlSet
from strategies.joint import Joint
from strategies.distill import kd as kd_loss
from strategies.lwf import LwFPlugin
from strategies.wiseft import WiSEFT, wise_ft
from strategies.zscl import ZSCL, ZSCLPlugin, zscl_loss


# -- a toy CLIP model and a stand-in for the strategy's per-iteration state ----------------------
class ToyClip(nn.Module):
    def __init__(self, d_image: int = 6, d_text: int = 5, dim: int = 4) -> None:
        super().__init__()
        self.visual = nn.Linear(d_image, dim)
        self.text = nn.Linear(d_text, dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)), requires_grad=False)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)

    def encode_text(self, t: torch.Tensor) -> torch.Tensor:
        return self.text(t)


def toy_classifier(n_classes: int = 4, n_templates: int = 2, seed: int = 0) -> ClipClassifier:
    torch.manual_seed(seed)
    return ClipClassifier(ToyClip(), [f"c{i}" for i in range(n_classes)], torch.randn(n_classes * n_templates, 5), n_templates)


def fake_strategy(classifier: ClipClassifier, classes: list[int], x: torch.Tensor, experience: int = 0) -> SimpleNamespace:
    return SimpleNamespace(model=classifier, mb_x=x, mb_output=classifier(x), loss=torch.zeros(()), device="cpu",
                           experience=SimpleNamespace(classes_in_this_experience=classes, current_experience=experience))


def entropy(logits: torch.Tensor, T: float) -> torch.Tensor:
    p = torch.softmax(logits / T, dim=1)
    return -(p * p.log()).sum(1).mean()


def max_grad(module: nn.Module) -> float:
    """The largest gradient entry over the trainable parameters that received one."""
    found = [float(p.grad.abs().max()) for p in module.parameters() if p.requires_grad and p.grad is not None]
    assert found, "no parameter received a gradient"
    return max(found)


def assert_gradient_is_rounding(at_start: float, classifier: ClipClassifier, term, logits, n: int) -> None:
    """``at_start``, the largest gradient at student = teacher, is rounding. Their distributions
    are equal up to float32 rounding (bit for bit only where both run the same kernels, which
    differs between CPUs), and the gradient is linear in their displacement: measure it after
    moving the student's image weights by a small known amount (``term()`` the loss, ``logits()``
    the student's and the teacher's), then scale it down to the rounding of two softmaxes over n."""
    classifier.model.zero_grad()
    with torch.no_grad():
        classifier.model.visual.weight.add_(1e-3 * torch.randn_like(classifier.model.visual.weight))
    classifier.invalidate()
    term().backward()
    moved_by = probability_displacement(*logits(), 2.0, both_directions=True)
    assert at_start <= gradient_at_rounding(max_grad(classifier), moved_by, 2 * softmax_rounding(n))
    classifier.model.zero_grad()


# -- KD (shared by LwF and ZSCL) ------------------------------------------------------------------
def test_kd_formula_on_a_hand_computed_example():
    # row 1: teacher softmax([0, ln 3] / 2) against uniform student: CE = ln 2, times T^2 = 4
    # row 2: uniform teacher against student softmax([0, 2 ln 3] / 2) = (1/4, 3/4): CE = ln(16/3) / 2
    teacher = torch.tensor([[0.0, math.log(3)], [0.0, 0.0]])
    student = torch.tensor([[0.0, 0.0], [0.0, 2 * math.log(3)]])
    expected = (4 * math.log(2) + 4 * 0.5 * math.log(16 / 3)) / 2
    assert float(kd_loss(teacher, student, 2.0)) == pytest.approx(expected, rel=1e-6)
    assert float(kd_loss(teacher, student, 1.0)) != pytest.approx(expected, rel=1e-3)  # T matters


def test_kd_at_student_equal_teacher_is_the_teacher_entropy_with_zero_gradient():
    torch.manual_seed(0)
    teacher = 5 * torch.randn(8, 6)
    student = teacher.clone().requires_grad_(True)
    loss = kd_loss(teacher, student, 2.0)
    loss.backward()
    # two float32 formulas of T^2 * entropy, 6 terms a row: a few eps each, relative
    assert float(loss) == pytest.approx(4 * float(entropy(teacher, 2.0)), rel=sum_rounding(6 * 8, 1.0))
    assert student.grad.abs().max() <= kd_gradient_rounding(6, 8, 2.0)  # zero up to the softmaxes' rounding
    moved = (teacher + torch.randn(8, 6)).requires_grad_(True)
    kd_loss(teacher, moved, 2.0).backward()
    assert moved.grad.abs().max() > 1e-3 and float(kd_loss(teacher, moved)) > float(loss)


# -- LwF -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [{}, {"text_features": "teacher", "symmetric": True}])
def test_lwf_term_at_session_start_is_the_teacher_entropy_with_zero_gradient(options):
    classifier = toy_classifier()
    x = torch.randn(7, 6)
    plugin = LwFPlugin(**options)
    strategy = fake_strategy(classifier, [1, 3], x)
    plugin.before_training_exp(strategy)
    assert plugin.distilled == [1, 3]  # the current session's classes
    term = plugin.term(classifier, x, strategy.mb_output)
    z_t = strategy.mb_output.detach()[:, [1, 3]]  # student = teacher here
    expected = 4 * entropy(z_t, 2.0) + (4 * entropy(z_t.t(), 2.0) if options else 0)
    assert float(term) == pytest.approx(float(expected), rel=sum_rounding(2 * 7, 1.0))  # 2 x 7 entropies
    term.backward()
    assert_gradient_is_rounding(max_grad(classifier), classifier, lambda: plugin.term(classifier, x, classifier(x)),
                                lambda: (classifier(x)[:, [1, 3]], plugin.teacher(x)[:, [1, 3]]), n=7)
    # the teacher never gets a gradient, and stays put when the student moves
    assert all(not p.requires_grad and p.grad is None for p in plugin.teacher.parameters())
    before = [p.clone() for p in plugin.teacher.parameters()]
    with torch.no_grad():
        classifier.model.visual.weight.add_(0.5)
    classifier.invalidate()
    moved = plugin.term(classifier, x, classifier(x))
    moved.backward()
    assert float(moved) > float(term) + 1e-4
    assert classifier.model.visual.weight.grad.abs().max() > 1e-4
    assert all(torch.equal(a, b) and b.grad is None for a, b in zip(before, plugin.teacher.parameters()))


def test_lwf_classes_current_or_seen_before():
    x = torch.randn(3, 6)
    current, old = LwFPlugin(classes="current"), LwFPlugin(classes="seen_before")
    for plugin in (current, old):
        classifier = toy_classifier()
        first = fake_strategy(classifier, [0, 1], x, 0)
        plugin.before_training_exp(first)
        plugin.after_training_exp(first)
        plugin.before_training_exp(fake_strategy(classifier, [2, 3], x, 1))
    assert current.distilled == [2, 3] and old.distilled == [0, 1]
    fresh = LwFPlugin(classes="seen_before")
    strategy = fake_strategy(toy_classifier(), [0, 1], x)
    fresh.before_training_exp(strategy)
    fresh.before_backward(strategy)  # nothing seen before session 1: no term
    assert float(strategy.loss) == 0.0  # exact: nothing was added
    with pytest.raises(ConfigError, match="strategy.classes"):
        LwFPlugin(classes="old")


# -- WiSE-FT -------------------------------------------------------------------------------------
def test_wise_ft_is_the_convex_combination_of_state_dicts():
    theta_0 = {"w": torch.tensor([0.0, 2.0]), "b": torch.tensor([4.0])}
    theta_1 = {"w": torch.tensor([1.0, 0.0]), "b": torch.tensor([8.0])}
    merged = wise_ft(theta_0, theta_1, 0.25)
    assert torch.equal(merged["w"], torch.tensor([0.25, 1.5])) and torch.equal(merged["b"], torch.tensor([5.0]))
    assert torch.equal(wise_ft(theta_0, theta_1, 1.0)["w"], theta_1["w"])
    assert torch.equal(wise_ft(theta_0, theta_1, 0.0)["b"], theta_0["b"])


# -- ZSCL ----------------------------------------------------------------------------------------
def toy_reference(n: int = 10) -> ControlSet:
    torch.manual_seed(1)
    return ControlSet("training-captions", torch.randn(n, 6), torch.randn(n, 5), torch.arange(n), [f"r{i}" for i in range(n)])


@pytest.mark.parametrize("options", [{}, {"text_features": "student", "ref_texts": "batch"}])
def test_zscl_term_at_the_initial_model_is_entropy_minimal_with_zero_gradient(options):
    classifier = toy_classifier()
    plugin = ZSCLPlugin(toy_reference(), weight=1.0, l2=1.0, ref_batch_size=4, seed=0, **options)
    strategy = fake_strategy(classifier, [0, 1], torch.randn(3, 6))
    plugin.before_training_exp(strategy)
    plugin.before_backward(strategy)
    ref = plugin.reference
    with torch.no_grad():
        u = torch.nn.functional.normalize(classifier.model.encode_image(ref.image_inputs[plugin.last_indices]), dim=-1)
        texts = ref.text_inputs if not options else ref.text_inputs[plugin.last_indices]
        v = torch.nn.functional.normalize(classifier.model.encode_text(texts), dim=-1)
        z = 10.0 * u @ v.t()
    # two float32 formulas of T^2 (H_rows + H_columns) over a 4 x 10 (or 4 x 4) matrix
    assert float(strategy.loss) == pytest.approx(float(4 * (entropy(z, 2.0) + entropy(z.t(), 2.0))),
                                                 rel=sum_rounding(2 * z.numel(), 1.0))
    strategy.loss.backward()

    def reference_logits():  # on the reference batch of the last call, against the initial model's texts
        images = ref.image_inputs[plugin.last_indices]
        texts = ref.text_inputs if not options else ref.text_inputs[plugin.last_indices]
        with torch.no_grad():
            text = torch.nn.functional.normalize(plugin.initial.encode_text(texts), dim=-1)
            student, initial = (torch.nn.functional.normalize(m.encode_image(images), dim=-1)
                                for m in (classifier.model, plugin.initial))
        return 10.0 * student @ text.t(), 10.0 * initial @ text.t()

    def again():
        fresh = fake_strategy(classifier, [0, 1], strategy.mb_x)
        plugin.before_backward(fresh)
        return fresh.loss

    assert_gradient_is_rounding(max_grad(classifier), classifier, again, reference_logits, n=z.shape[1])
    assert all(p.grad is None for p in plugin.initial.parameters())
    # the same function away from the initial model: larger, with a gradient
    student = torch.nn.functional.normalize(u + 0.3 * torch.randn_like(u), dim=-1).requires_grad_(True)
    moved = zscl_loss(student, v, u, v, 10.0)
    moved.backward()
    assert float(moved) > float(strategy.loss) + 1e-4 and student.grad.abs().max() > 1e-4


def test_zscl_reference_batches_are_seeded_and_cover_the_reference():
    def batches(seed):
        plugin = ZSCLPlugin(toy_reference(), ref_batch_size=4, seed=seed)
        plugin.before_training_exp(fake_strategy(toy_classifier(), [0], torch.randn(2, 6)))
        return [plugin.next_indices().tolist() for _ in range(5)]

    first = batches(3)
    assert first == batches(3) and first != batches(4)
    assert sorted(sum(first[:2], []) + first[2][:2]) == list(range(10))  # a shuffled pass, then another


def zscl_session(we_interval: int, steps: int) -> tuple[list[torch.Tensor], int]:
    """A session of ``steps`` optimizer steps from weights 0 that set the weights to known values
    (after step t every entry is t); returns the weights after the session's weight ensembling
    and the number of snapshots averaged."""
    classifier = toy_classifier()
    plugin = ZSCLPlugin(toy_reference(), we_interval=we_interval, seed=0)
    strategy = fake_strategy(classifier, [0, 1], torch.randn(3, 6))
    params = [p for p in classifier.parameters() if p.requires_grad]
    with torch.no_grad():
        for p in params:
            p.zero_()  # theta_start = 0
    plugin.before_training_exp(strategy)  # theta_start is the first snapshot
    added = []
    update = plugin.average.update_parameters
    plugin.average.update_parameters = lambda model: (added.append(1), update(model))
    for step in range(steps):
        with torch.no_grad():
            for p in params:
                p.fill_(step + 1.0)
        plugin.after_update(strategy)
    plugin.after_training_exp(strategy)
    return [p.detach().clone() for p in params], 1 + len(added)


def test_zscl_weight_ensemble_averages_the_authors_12_snapshots_final_weights_included():
    after, count = zscl_session(100, 1000)
    # start (0), after steps 1, 101, ..., 901 (values 1, 101, ..., 901), the final weights (1000)
    snapshots = [0.0] + [1.0 + 100 * k for k in range(10)] + [1000.0]
    assert count == len(snapshots) == 12
    for p in after:  # a running mean of 12 values up to 1000: within 13 eps of the largest
        torch.testing.assert_close(p, torch.full_like(p, sum(snapshots) / 12), rtol=0, atol=sum_rounding(13, 1000.0))


def test_zscl_final_weights_count_once_when_the_last_step_is_a_snapshot():
    after, count = zscl_session(3, 7)  # snapshots after steps 1, 4, 7 (the last)
    assert count == 4
    for p in after:
        torch.testing.assert_close(p, torch.full_like(p, (0 + 1 + 4 + 7) / 4), rtol=0, atol=sum_rounding(5, 7.0))


def test_zscl_without_reference_pairs_is_a_config_error():
    from continual.config.load import load_config
    from continual.context import StrategyContext

    cfg = load_config(None, [])
    context = StrategyContext(lambda texts: torch.zeros(len(texts), 5), tokenizer=None, reference=None)
    with pytest.raises(ConfigError, match=r"^zscl needs reference pairs: set control.name \(its complement\), or "
                                          r"strategy.ref_images and strategy.ref_sentences$"):
        ZSCL(classifier=toy_classifier(), train=cfg.train, context=context)


# -- as plain Avalanche plugins ------------------------------------------------------------------
def test_plugins_work_inside_an_ordinary_avalanche_strategy():
    import warnings

    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin

    from continual.stream import InputsDataset
    from strategies.wiseft import WiSEFTPlugin

    torch.manual_seed(0)
    y = torch.arange(40) % 4
    data = {"train": InputsDataset(torch.randn(40, 6) + y[:, None], y.tolist()),
            "test": InputsDataset(torch.randn(8, 6), (torch.arange(8) % 4).tolist())}
    benchmark = class_incremental_benchmark(data, class_order=[0, 1, 2, 3], num_classes_per_exp=[2, 2])
    classifier = toy_classifier()
    lwf, wise, zscl = LwFPlugin(), WiSEFTPlugin(alpha=0.5), ZSCLPlugin(toy_reference(), ref_batch_size=4, we_interval=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        strategy = Naive(model=classifier, optimizer=torch.optim.SGD(classifier.parameters(), lr=0.1),
                         criterion=nn.CrossEntropyLoss(), train_mb_size=8, train_epochs=1,
                         plugins=[lwf, zscl, wise], evaluator=EvaluationPlugin(loggers=[]))
        start = {n: p.detach().clone() for n, p in classifier.named_parameters() if p.requires_grad}
        for experience in benchmark.train_stream:
            strategy.train(experience)
    assert lwf.distilled == [2, 3] and zscl.last_indices is not None and len(zscl.last_indices) == 4
    assert all(torch.equal(wise.theta_0[n], start[n]) for n in start)  # the pre-trained weights
    assert all(torch.isfinite(p).all() for p in classifier.parameters())
    assert any(not torch.equal(p.detach(), start[n]) for n, p in classifier.named_parameters() if n in start)


# -- real runs -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("baselines")  # one MLflow store for every run of this file


def run_digits(make_config, store, *overrides):
    return run(make_config(store, "control.name=null", *overrides), echo=lambda s: None, progress=False)


@pytest.fixture(scope="module")
def finetune(make_config, store):
    return run_digits(make_config, store)


class Recorder(SupervisedPlugin):
    """Calls ``fn(strategy)`` at one hook."""

    def __init__(self, hook: str, fn) -> None:
        super().__init__()
        setattr(self, hook, lambda strategy, **kwargs: fn(strategy))


def test_lwf_runs_and_at_zero_weight_is_finetune(finetune, make_config, store, monkeypatch):
    values = []
    term = LwFPlugin.term
    monkeypatch.setattr(LwFPlugin, "term", lambda self, *a: values.append(term(self, *a)) or values[-1])
    result = run_digits(make_config, store, "strategy.name=lwf")
    assert len(values) == 2 * 2 * 7 and all(math.isfinite(float(v)) and float(v) > 0 for v in values)
    assert not np.array_equal(result.accuracy, finetune.accuracy)  # the term changes training
    zero = run_digits(make_config, store, "strategy.name=lwf", "strategy.alpha=0")
    # exact: a term of weight 0 adds 0.0 to the loss and to every gradient, the same kernels run
    np.testing.assert_array_equal(zero.accuracy, finetune.accuracy)


def test_wiseft_interpolates_exactly_and_alpha_one_is_finetune(finetune, make_config, store, monkeypatch):
    theta_0, trained, merged = {}, [], []

    def state(strategy):
        return {n: p.detach().clone() for n, p in strategy.model.named_parameters() if p.requires_grad}

    def first(strategy):
        theta_0.update(state(strategy) if not theta_0 else {})

    plugins = WiSEFT.method_plugins
    monkeypatch.setattr(WiSEFT, "method_plugins", lambda self, classifier: [
        Recorder("before_training_exp", first), Recorder("after_training_exp", lambda s: trained.append(state(s))),
        *plugins(self, classifier), Recorder("after_training_exp", lambda s: merged.append(state(s)))])
    result = run_digits(make_config, store, "strategy.name=wiseft", "strategy.alpha=0.5")
    assert set(theta_0) == {"model.visual.head.proj.weight", "model.text.proj.weight"} and len(merged) == 2
    for session in range(2):
        for name, value in merged[session].items():
            assert torch.equal(value, 0.5 * theta_0[name] + 0.5 * trained[session][name])
            assert not torch.equal(value, trained[session][name])
    assert result.accuracy[2, 1] > 50  # it still learns
    one = run_digits(make_config, store, "strategy.name=wiseft", "strategy.alpha=1")
    np.testing.assert_array_equal(one.accuracy, finetune.accuracy)  # exact, as above


def test_zscl_distils_on_reference_pairs_never_the_control(make_config, store, monkeypatch):
    from streams.control import heldout_captions

    used = []
    take = ZSCLPlugin.next_indices
    monkeypatch.setattr(ZSCLPlugin, "next_indices",
                        lambda self: used.append((self.reference, take(self))) or used[-1][1])
    cfg = make_config(store, "strategy.name=zscl", "strategy.we_interval=2")
    result = run(cfg, echo=lambda s: None, progress=False)
    control_keys = set(heldout_captions(cfg.control).keys)
    reference_keys = heldout_captions(cfg.control, complement=True).keys
    assert len(used) == 2 * 2 * 7  # one reference batch per step
    for reference, index in used:
        assert reference.name == "training-captions" and reference.keys == reference_keys
        assert len(index) == 64 and not {reference.keys[i] for i in index} & control_keys
    assert result.accuracy[1, 0] > result.accuracy[0, 0] + 20 and result.accuracy[2, 1] > 50
    assert result.summary["retention/relative"] > 0


def test_joint_trains_on_the_union_of_sessions(finetune, make_config, store, monkeypatch):
    labels = {}

    def record(strategy):
        labels.setdefault(strategy.experience.current_experience, []).extend(strategy.mb_y.tolist())

    monkeypatch.setattr(Joint, "method_plugins", lambda self, classifier: [Recorder("after_training_iteration", record)])
    result = run_digits(make_config, store, "strategy.name=joint")
    first, second = set(labels[0]), set(labels[1])
    assert len(labels[0]) == 2 * 200 and len(labels[1]) == 2 * 400  # 2 epochs over D_1, then D_1 u D_2
    assert len(first) == 5 and first < second and len(second) == 10
    assert [s["examples"] for s in result.sessions[1:]] == [400, 800]
    assert result.accuracy[2, 0] > finetune.accuracy[2, 0] + 30  # session 1 is not forgotten
    assert result.accuracy[2, 0] > 50 and result.accuracy[2, 1] > 50
