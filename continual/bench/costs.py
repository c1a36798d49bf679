"""``continual bench``: what our training costs, as ratios measured in one process.

Bare times depend on the machine and on whatever else runs on it; ratios of times taken in the
same process, interleaved, mostly do not. For each model (random init, every parameter
training, random images of the model's size, ``classes`` class prompts) it measures:

- our training step (ClipStrategy fine-tuning: Avalanche's loop, our data loader, callbacks)
  against a bare open_clip loop doing the same computation (same model, batch, AdamW): the
  throughput ratio (goal >= 1.10: our step fuses the optimizer update, the bare loop uses
  torch's default AdamW as open_clip users write it);
- each method's step against fine-tuning's (goals: VR-LwF <= 1.6x, Mod-X <= 1.5x, CPE-CLIP
  <= 1x);
- peak memory of a short session per method against fine-tuning's (goals: a teacher costs no
  more than its frozen copy: what a method adds over fine-tuning, less the text features it
  caches by design (VR-LwF's vocabulary, Mod-X's class captions), is at most its frozen copy
  plus 1% (the batch's teacher features); CPE-CLIP no more than fine-tuning). CUDA: the
  allocator's peak; CPU: the peak of the tensor allocations the PyTorch profiler records;
- the step's achieved FLOP/s (FLOPs counted by ``torch.utils.flop_counter``) as a share of what
  one large matrix product reaches on the same device in the same run;

and, with the real runner (``continual run``'s code, MLflow included) on the default experiment's
model, the cost of a run against its number of sessions (the same total data) and evaluation's
share of a session. With ``profile``, where the fine-tuning step's time goes (PyTorch profiler).

Step times run from the end of one training iteration to the end of the next (data loading
included); the first ``warmup`` steps of each session are dropped, variants alternate within each
round, and medians are reported. On a CPU shared with other work, use one thread (the default):
threads of one process that wait on each other at every operator make times swing several-fold
when another process takes a core.
"""

from __future__ import annotations

import copy
import itertools
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

Echo = Callable[[str], None]
STRATEGY_VARIANTS = ("finetune", "vrlwf", "modx", "cpe-clip")
GOALS = {"vrlwf": 1.6, "modx": 1.5, "cpe-clip": 1.0}  # step time over fine-tuning's, at most
THROUGHPUT_GOAL = 1.10  # our step's throughput over the bare open_clip loop's, at least
FLOPS_GOAL = 0.55  # the step's FLOP/s over one large matrix product's, at least
SESSIONS_GOAL = 1.2  # a run of many sessions over one of few on the same data, at most
TEACHER_ALLOWANCE = 1.01  # frozen copies: its weights, plus the batch's teacher features
CLASS_NAMES = ["T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]


@dataclass
class Plan:
    """How one model is measured."""

    model: str
    batch_size: int
    steps: int  # timed steps per session
    warmup: int = 1  # untimed steps at the start of each session
    rounds: int = 1  # sessions per variant, interleaved with the other variants
    classes: int = 4
    vocab_size: int = 1000  # VR-LwF's replayed vocabulary (encoded once per session, not per step)


DEFAULT_PLANS = {
    "tiny-vit": Plan("tiny-vit", batch_size=32, steps=8, warmup=2, rounds=2),
    "ViT-B-32": Plan("ViT-B-32", batch_size=8, steps=3, warmup=1, rounds=1, vocab_size=64),
}


def plan_for(model: str, **overrides: Any) -> Plan:
    base = DEFAULT_PLANS.get(model, Plan(model, batch_size=8, steps=3, vocab_size=64))
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class ModelResult:
    plan: Plan
    step_seconds: dict[str, list[float]] = field(default_factory=dict)  # variant -> timed steps
    peak_bytes: dict[str, float] = field(default_factory=dict)  # variant -> peak over the session's start
    cached_bytes: dict[str, float] = field(default_factory=dict)  # variant -> tensors its plugins keep
    frozen_copy_bytes: float = 0.0
    step_flops: float = 0.0  # the bare loop's step
    our_flops: float = 0.0  # ours: the prompts' padding cut (continual.clip.text_context)
    matmul_flops_per_s: float = 0.0
    setup_seconds: dict[str, float] = field(default_factory=dict)  # variant -> session start (teacher, vocabulary)
    profile: dict[str, float] = field(default_factory=dict)  # category -> share of the fine-tuning step's time

    def median(self, variant: str) -> float:
        return statistics.median(self.step_seconds[variant])


# -- timing ----------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock:
    """Times from the end of one step to the end of the next (the first from the session's start)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.marks: list[float] = []

    def mark(self) -> None:
        _sync(self.device)
        self.marks.append(time.perf_counter())

    def steps(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def _clock_plugin(clock: StepClock) -> Any:
    from avalanche.core import SupervisedPlugin

    class Clock(SupervisedPlugin):
        def before_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
            clock.mark()

        def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
            clock.mark()

    return Clock()


# -- the workload ---------------------------------------------------------------------------------
@dataclass
class Workload:
    model: nn.Module  # the initial model; every variant trains a copy
    names: list[str]
    text_inputs: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor
    tokenizer: Any
    device: torch.device
    precision: str

    def experience(self) -> Any:
        from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark

        from continual.stream import InputsDataset

        data = InputsDataset(self.images, self.labels.tolist())
        order = list(range(len(self.names)))
        return class_incremental_benchmark({"train": data, "test": data}, class_order=order,
                                           num_classes_per_exp=[len(order)]).train_stream[0]


def build_workload(plan: Plan, device: torch.device, precision: str) -> Workload:
    from continual.clip.backbone import create_model, set_trainable
    from continual.clip.heads import prompts

    torch.manual_seed(0)
    model, _, tokenizer = create_model(plan.model)  # random init
    set_trainable(model, "all")
    size = model.visual.image_size
    size = size if isinstance(size, (tuple, list)) else (size, size)
    n = plan.batch_size * (plan.warmup + plan.steps)
    g = torch.Generator().manual_seed(1)
    names = (CLASS_NAMES * (plan.classes // len(CLASS_NAMES) + 1))[: plan.classes]
    return Workload(model.to(device), names, tokenizer(prompts(names, ["a photo of a {}."])),
                    torch.randn(n, 3, *size, generator=g), torch.arange(n) % plan.classes, tokenizer,
                    device, precision)


def train_config(plan: Plan, precision: str) -> Any:
    from omegaconf import OmegaConf

    from continual.config.schema import TrainConfig

    return OmegaConf.structured(TrainConfig(epochs=1, batch_size=plan.batch_size, lr=1e-5, optimizer="adamw",
                                            scheduler="constant", precision=precision))


def make_strategy(variant: str, work: Workload, plan: Plan, plugins: list) -> Any:
    """A fresh copy of the model in ``variant``'s strategy, as the runner builds it."""
    import strategies  # noqa: F401  (registers the strategies by name)
    from continual.context import StrategyContext
    from continual.clip.heads import ClipClassifier
    from continual.registry import STRATEGIES

    cls = STRATEGIES.get(variant, "strategy")
    params = None
    if cls.Params is not None:
        params = cls.Params(vocab_size=plan.vocab_size) if variant == "vrlwf" else cls.Params()
    classifier = ClipClassifier(copy.deepcopy(work.model), work.names, work.text_inputs.to(work.device), 1)
    return cls(classifier=classifier, train=train_config(plan, work.precision), params=params,
               context=StrategyContext(encode_texts=work.tokenizer, tokenizer=work.tokenizer),
               plugins=plugins, device=str(work.device))


def time_strategy(variant: str, work: Workload, plan: Plan) -> tuple[list[float], float]:
    """Timed steps of one session of ``variant``, and the time its session start took."""
    clock = StepClock(work.device)
    strategy = make_strategy(variant, work, plan, [_clock_plugin(clock)])
    started = time.perf_counter()
    strategy.train(work.experience())
    steps = clock.steps()
    setup = clock.marks[0] - started if clock.marks else float("nan")
    return steps[plan.warmup:], setup


def bare_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
              text: torch.Tensor, precision: str) -> None:
    """The same computation as our fine-tuning step, written with open_clip calls only."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        image = F.normalize(model.encode_image(x), dim=-1)
        classes = F.normalize(model.encode_text(text), dim=-1)
        logits = model.logit_scale.clamp(max=4.6052).exp() * image @ classes.t()
        loss = F.cross_entropy(logits, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def time_bare(work: Workload, plan: Plan) -> list[float]:
    """A bare open_clip training loop: torch DataLoader, AdamW, nothing else."""
    from torch.utils.data import DataLoader, TensorDataset

    model = copy.deepcopy(work.model).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    loader = DataLoader(TensorDataset(work.images, work.labels), batch_size=plan.batch_size, shuffle=True)
    text = work.text_inputs.to(work.device)
    clock = StepClock(work.device)
    clock.mark()
    for x, y in loader:
        bare_step(model, optimizer, x.to(work.device), y.to(work.device), text, work.precision)
        clock.mark()
    return clock.steps()[plan.warmup:]


def count_step_flops(work: Workload, plan: Plan, ours: bool = False) -> float:
    """FLOPs of one training step (forward and backward; the update is not counted): the bare
    step's, or with ``ours`` our step's, whose text tower reads the prompts up to their end only."""
    from torch.utils.flop_counter import FlopCounterMode

    from continual.clip.text_context import encode_text

    model = copy.deepcopy(work.model).train()
    x, y = work.images[: plan.batch_size].to(work.device), work.labels[: plan.batch_size].to(work.device)
    text = work.text_inputs.to(work.device)
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(work.device.type, dtype=torch.bfloat16, enabled=work.precision == "bf16"):
            image = F.normalize(model.encode_image(x), dim=-1)
            classes = F.normalize(encode_text(model, text) if ours else model.encode_text(text), dim=-1)
            loss = F.cross_entropy(100 * image @ classes.t(), y)
        loss.backward()
    return float(counter.get_total_flops())


def matmul_flops_per_s(device: torch.device, precision: str, repeats: int = 5) -> float:
    """What one large square matrix product reaches (the best of ``repeats``)."""
    n = 8192 if device.type == "cuda" else 2048
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        a @ a
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


# -- memory ----------------------------------------------------------------------------------------
def plugin_tensor_bytes(strategy: Any) -> float:
    """Bytes of the tensors the strategy's plugins hold as attributes (cached text features; a
    teacher is a model, not counted here)."""
    return float(sum(v.numel() * v.element_size() for p in strategy.plugins for v in vars(p).values()
                     if torch.is_tensor(v)))


def peak_session_bytes(variant: str, work: Workload, plan: Plan, steps: int = 2) -> tuple[float, float]:
    """Peak tensor memory of a ``steps``-step session of ``variant`` above what was allocated
    before it (its model copy is allocated before, so what is measured is the teacher, the
    optimizer state, the gradients and the activations), and :func:`plugin_tensor_bytes`."""
    short = replace(plan, steps=steps, warmup=0)
    strategy = make_strategy(variant, work, short, [])  # its model copy is allocated outside the window
    experience = work.experience()
    if work.device.type == "cuda":
        torch.cuda.synchronize(work.device)
        torch.cuda.reset_peak_memory_stats(work.device)
        before = torch.cuda.memory_allocated(work.device)
        strategy.train(experience)
        return float(torch.cuda.max_memory_allocated(work.device) - before), plugin_tensor_bytes(strategy)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        strategy.train(experience)
    # allocations (+) and frees (-) in time order: the running sum's maximum is the peak
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
                     and e.device_type() == torch.autograd.DeviceType.CPU), key=lambda e: e.start_ns())
    return float(max(itertools.accumulate((e.nbytes() for e in events), initial=0))), plugin_tensor_bytes(strategy)


def model_bytes(model: nn.Module) -> float:
    return float(sum(t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers())))


# -- where the time goes -----------------------------------------------------------------------------
def profile_breakdown(variant: str, work: Workload, plan: Plan) -> dict[str, float]:
    """Shares of ``variant``'s session time (PyTorch profiler, CPU time) by kind of work."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if work.device.type == "cuda" else [])
    strategy = make_strategy(variant, work, plan, [])
    with profile(activities=activities) as prof:
        strategy.train(work.experience())
    events = prof.key_averages()
    cuda = work.device.type == "cuda"

    def self_time(e: Any) -> float:
        return e.self_device_time_total if cuda else e.self_cpu_time_total

    def total_time(e: Any) -> float:
        return e.device_time_total if cuda else e.cpu_time_total

    total = sum(self_time(e) for e in events)
    kinds = {
        "matrix products": sum(self_time(e) for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm",
                                                                          "aten::baddbmm")),
        "attention kernels": sum(self_time(e) for e in events if "scaled_dot_product" in e.key),
        "optimizer update (AdamW)": sum(total_time(e) for e in events if e.key.startswith("Optimizer.step#")),
        "data loading": sum(total_time(e) for e in events if e.key.startswith("enumerate(DataLoader)")),
    }
    kinds["the rest (element-wise, norms, activations, autograd, Python)"] = total - sum(kinds.values())
    return {k: v / total for k, v in kinds.items()}


# -- one model -------------------------------------------------------------------------------------
def bench_model(plan: Plan, device: torch.device, precision: str, echo: Echo, profile: bool = False) -> ModelResult:
    work = build_workload(plan, device, precision)
    result = ModelResult(plan, frozen_copy_bytes=model_bytes(work.model))
    variants = ("bare",) + STRATEGY_VARIANTS
    for r in range(plan.rounds):
        for variant in variants:
            echo(f"  {plan.model}: round {r + 1}/{plan.rounds}, {variant} ...")
            if variant == "bare":
                steps = time_bare(work, plan)
            else:
                steps, setup = time_strategy(variant, work, plan)
                result.setup_seconds[variant] = setup
            result.step_seconds.setdefault(variant, []).extend(steps)
    for variant in STRATEGY_VARIANTS:
        echo(f"  {plan.model}: peak memory of {variant} ...")
        result.peak_bytes[variant], result.cached_bytes[variant] = peak_session_bytes(variant, work, plan)
    result.step_flops = count_step_flops(work, plan)
    result.our_flops = count_step_flops(work, plan, ours=True)
    result.matmul_flops_per_s = matmul_flops_per_s(device, precision)
    if profile:
        echo(f"  {plan.model}: profiling fine-tuning ...")
        result.profile = profile_breakdown("finetune", work, plan)
    return result


# -- a run's cost against its number of sessions ---------------------------------------------------
@dataclass
class RunCost:
    sessions: int
    total: float
    train: float
    evaluation: float
    # median over rounds of this run's total / the first session count's in the same round:
    # runs a few seconds apart share the machine's state, so the ratio drifts less than the times
    ratio: float = 1.0


def run_costs(sessions: list[int], echo: Echo, overrides: tuple[str, ...] = (), rounds: int = 5) -> list[RunCost]:
    """``continual run`` (finetune, configs/default.yaml's experiment: the LiT base, cached
    features) with the same total data cut into ``sessions`` sessions; the session counts
    alternate within each of ``rounds`` rounds (in a rotated order). Per count: the median
    round's times, and the median of its per-round ratios to the first count."""
    from continual.config.load import load_config
    from continual.run.loop import run

    measured: dict[int, list[RunCost]] = {t: [] for t in sessions}
    with tempfile.TemporaryDirectory(prefix="continual-bench-") as tmp:
        echo("  a first run, not counted (loads the towers, the cached features, MLflow's store code) ...")
        run(load_config(None, [f"output_dir={tmp}/warm-up", f"stream.n_sessions={sessions[0]}", "train.epochs=1",
                               "tracking.experiment=bench", *overrides]), echo=lambda _: None, progress=False)
        for r in range(rounds):
            for t in sessions[r % len(sessions):] + sessions[:r % len(sessions)]:  # each count first once
                echo(f"  round {r + 1}/{rounds}: run with {t} sessions ...")
                cfg = load_config(None, [f"output_dir={tmp}/{r}-{t}", f"stream.n_sessions={t}", "train.epochs=20",
                                         "tracking.experiment=bench", *overrides])
                start = time.perf_counter()
                result = run(cfg, echo=lambda _: None, progress=False)
                total = time.perf_counter() - start
                measured[t].append(RunCost(t, total, sum(s.get("train_seconds", 0.0) for s in result.sessions),
                                           sum(s["eval_seconds"] for s in result.sessions)))
    base = measured[sessions[0]]
    out = []
    for t, runs in measured.items():
        median = sorted(runs, key=lambda c: c.total)[(len(runs) - 1) // 2]
        median.ratio = statistics.median(c.total / b.total for c, b in zip(runs, base))
        out.append(median)
    return out


# -- the report ------------------------------------------------------------------------------------
def _goal(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(results: list[ModelResult], costs: list[RunCost], device: str, precision: str) -> str:
    lines = [f"continual bench: device {device}, {precision}, torch threads {torch.get_num_threads()}"]
    if torch.device(device).type == "cuda":
        lines[0] += f" ({torch.cuda.get_device_name(torch.device(device))})"
    for res in results:
        p = res.plan
        ft = res.median("finetune")
        lines += ["", f"{p.model} (random init, all parameters training): batch {p.batch_size}, {p.classes} class "
                      f"prompts, AdamW; {len(res.step_seconds['finetune'])} timed steps per variant "
                      f"(median), {p.rounds} round(s)"]
        ratio = res.median("bare") / ft
        lines.append(f"  our step vs bare open_clip loop: throughput {ratio:.3f} of the bare loop's  "
                     f"[goal >= {THROUGHPUT_GOAL}: {_goal(ratio >= THROUGHPUT_GOAL)}]   (bare {res.median('bare'):.3f} s, "
                     f"ours {ft:.3f} s)")
        for variant, goal in GOALS.items():
            r = res.median(variant) / ft
            lines.append(f"  {variant:<9} step / fine-tuning step: {r:.2f}x  [goal <= {goal}x: {_goal(r <= goal)}]")
        lines.append("  session start (teacher copy, vocabulary or class features) / one fine-tuning step: "
                     + ", ".join(f"{v} {res.setup_seconds[v] / ft:.1f}" for v in STRATEGY_VARIANTS))
        base = res.peak_bytes["finetune"]
        copy_mb = res.frozen_copy_bytes / 2 ** 20
        lines.append(f"  peak memory over the weights (fine-tuning {base / 2 ** 20:,.0f} MiB; a frozen copy of "
                     f"the model is {copy_mb:,.0f} MiB):")
        for variant in ("vrlwf", "modx"):
            cached = res.cached_bytes[variant]
            teacher = res.peak_bytes[variant] - base - cached
            share = teacher / res.frozen_copy_bytes
            lines.append(f"    {variant:<9} {res.peak_bytes[variant] / base:.2f}x fine-tuning: cached text features "
                         f"{cached / 2 ** 20:,.1f} MiB, the teacher {teacher / 2 ** 20:,.1f} MiB = {share:.3f} frozen "
                         f"copies  [goal <= 1 (+1%): {_goal(share <= TEACHER_ALLOWANCE)}]")
        cpe = res.peak_bytes["cpe-clip"] / base
        lines.append(f"    cpe-clip  {cpe:.2f}x fine-tuning  [goal <= 1: {_goal(cpe <= 1.0)}]")
        achieved = res.our_flops / ft
        share = achieved / res.matmul_flops_per_s
        lines.append(f"  FLOP/s: our step does {res.our_flops / 1e9:,.1f} GFLOP (the bare loop's "
                     f"{res.step_flops / 1e9:,.1f}: it runs the prompts' padding too) and reaches "
                     f"{achieved / 1e9:,.1f} GFLOP/s = {share:.2f} of one large "
                     f"matrix product's {res.matmul_flops_per_s / 1e9:,.1f} GFLOP/s (bare loop: "
                     f"{res.step_flops / res.median('bare') / res.matmul_flops_per_s:.2f})  "
                     f"[goal >= {FLOPS_GOAL}: {_goal(share >= FLOPS_GOAL)}]")
        if res.profile:
            lines.append("  where fine-tuning's session time goes: " + ", ".join(
                f"{kind} {share:.0%}" for kind, share in res.profile.items()))
    if costs:
        first = costs[0]
        lines += ["", "continual run (finetune, the default experiment: LiT base, cached features, 20 epochs "
                      "per session), the same total data in more sessions:"]
        for c in costs:
            other = c.total - c.train - c.evaluation
            share = c.evaluation / max(c.train + c.evaluation, 1e-9)
            goal = (f"  [goal <= {SESSIONS_GOAL}x: {_goal(c.ratio <= SESSIONS_GOAL)}]"
                    if c is costs[-1] and len(costs) > 1 else "")
            lines.append(f"  {c.sessions:>3} sessions: cost {c.ratio:.2f}x the {first.sessions}-session run "
                         f"(median round {c.total:.1f} s: train {c.train:.1f}, evaluation {c.evaluation:.1f}, the rest "
                         f"{other:.1f}); evaluation is {share:.0%} of training + evaluation{goal}")
    return "\n".join(lines)


def bench(models: list[str], device: str = "cpu", precision: str = "fp32", sessions: Optional[list[int]] = None,
          threads: int = 1, profile: bool = False, echo: Echo = print, features: bool = False,
          first_run: bool = False, **plan_overrides: Any) -> str:
    """Measure every model of ``models`` and the session scaling; return the report. ``threads``:
    torch's intra-op threads on the CPU (0 = torch's default). ``features``: frozen-trunk
    features against a bare loop; ``first_run``: a first run's time to training, empty cache
    (see :mod:`continual.bench.features`)."""
    from continual.bench import features as bench_features
    import warnings

    warnings.filterwarnings("ignore", message="no QP solver")
    dev = torch.device(device)
    before = torch.get_num_threads()
    if dev.type == "cpu" and threads:
        torch.set_num_threads(threads)
    try:
        results = []
        for name in models:
            echo(f"benchmarking {name} on {device} ...")
            results.append(bench_model(plan_for(name, **plan_overrides), dev, precision, echo, profile))
        costs = run_costs(sessions, echo) if sessions else []
        feats = None
        if features:
            echo("benchmarking frozen-trunk features ...")
            feats = bench_features.bench_features(echo)
        first = bench_features.first_run_seconds(echo) if first_run else None
        return "\n".join([report(results, costs, device, precision),
                          *bench_features.report_lines(feats, first)])
    finally:
        torch.set_num_threads(before)
