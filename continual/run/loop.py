"""The experiment runner: train session by session, evaluate everything after each, log it.

For a stream of T sessions the runner fills the session matrices ((T+1) x T): row 0 is the
model before any training; after training session i, row i holds the score on every session's
test data, future sessions included: accuracy on classification streams, image-to-text and
text-to-image R@1 (one matrix per direction) on image-text streams. After each row it also
evaluates the control data (never trained on), computes every summary metric of the rows so
far, checkpoints the trained parameters and the runner's state, and logs all of it to MLflow
with step = i.

Under torchrun (see :mod:`continual.system.distributed`) every process runs this same function on its
shard of the data; only rank 0 prints, logs to MLflow and writes checkpoints.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from omegaconf import DictConfig

from continual.run import checkpoint
from continual.run import faults
from continual.tracking import labels as run_info
from continual.config import fidelity
from continual.system import distributed
from continual.measure import metrics as M
from continual.config.load import to_dict, to_yaml
from continual.context import StrategyContext
from continual.errors import UserError
from continual.system.locks import RunLock
from continual.run.preflight import preflight, task_loss, tracking_uri
from continual.run.probes import ProbeDiagnostics, plan_line
from continual.registry import CONTROLS
from continual.system.signals import sigterm_as_interrupt

Echo = Callable[[str], None]


PARENT_TAG = "mlflow.parentRunId"  # MLflow nests a run under the run this tag names

# The matrices of each kind of stream, and the prefix of their metrics in MLflow.
MATRICES = {"classification": {"accuracy": "acc"}, "pairs": {"i2t_r1": "i2t", "t2i_r1": "t2i"}}


@dataclass
class RunResult:
    run_id: str
    tracking_uri: str
    accuracy: np.ndarray  # (T+1) x T: the first matrix (accuracy, or image-to-text R@1)
    control: list[dict]  # retrieval metrics per row
    summary: dict[str, float]
    sessions: list[dict] = field(default_factory=list)
    matrices: dict[str, np.ndarray] = field(default_factory=dict)  # every matrix, by name


def seed_everything(seed: int) -> None:
    """One seed fixes the class order, the sampling, the initialisation and the data order."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def plan(cfg: DictConfig) -> list[str]:
    """The run's plan, from the config and the data (no model is built, nothing trains), after the
    checks a real run makes (absent data aside: the plan then shows nominal counts)."""
    checked = preflight(cfg, strict=False)
    strategy_cls, params, stream = checked.strategy_cls, checked.params, checked.stream
    templates = ("the stream's own, per class" if stream.templates is not None
                 else "captions as they are" if stream.kind == "pairs" else list(cfg.model.templates))
    lines = [f"model {cfg.model.name} (pretrained: {cfg.model.pretrained or 'random init'}, trainable: "
             f"{strategy_cls.backbone_trainable or cfg.model.trainable}), templates {templates}"
             + (" (training with each class's first)" if cfg.model.train_templates == "first" else "")]
    lines.append(f"strategy {cfg.strategy.name}: {strategy_cls.__doc__.strip().splitlines()[0]}")
    if params is not None:
        lines.append("  params: " + ", ".join(f"{k}={v}" for k, v in vars(params).items()))
    lines += getattr(strategy_cls, "plan_notes", lambda _: [])(params)  # e.g. where a method's extra data is
    t = cfg.train
    length = f"{t.iterations} iterations" if t.iterations else f"{t.epochs} epochs"
    session_lr = f", lr by session {dict(t.session_lr)}" if t.session_lr else ""
    loss = task_loss(cfg, stream)
    warmup = f"{t.warmup_fraction:.0%} of each session" if t.warmup_fraction else t.warmup_steps
    lines.append(f"train: {length}/session, batch {t.batch_size}{', last partial batch dropped' if t.drop_last else ''}, "
                 f"{t.optimizer} lr {t.lr}{session_lr} (wd {t.weight_decay}, {t.scheduler}, warm-up {warmup}), label smoothing "
                 f"{t.label_smoothing}, " + (f"cross-entropy over {t.label_space} classes" if loss == "ce"
                                            else "contrastive loss over the batch's pairs")
                 + "; eval: " + (f"accuracy among {cfg.eval.label_space} classes" if stream.kind == "classification"
                                 else "retrieval R@1/5/10 per session's test pairs"))
    lines += stream.plan()
    if cfg.control.name:
        control = CONTROLS.get(cfg.control.name, "control.name")(cfg.control)
        lines += _without_stream_concepts(control, stream, lambda line: lines.append("  " + line)).plan()
    lines += fidelity.plan_lines(cfg, params, stream)
    lines.append(plan_line(cfg))
    lines.append(f"tracking: {tracking_uri(cfg)} (experiment '{cfg.tracking.experiment}')")
    return lines + [f"a run on this machine would stop: {reason}" for reason in checked.not_here]


@sigterm_as_interrupt  # SIGTERM ends the run as Ctrl-C does: KILLED, resumable
def run(cfg: DictConfig, echo: Echo = print, progress: bool = True, resume: Optional[str] = None,
        fresh: bool = False, parent: Optional[str] = None,
        on_row: Optional[Callable[[int, dict, str], None]] = None) -> RunResult:
    """Run the experiment ``cfg`` end to end and return its matrices and summary.

    An unfinished run of the same config in the same experiment (crashed, killed) is continued
    from its last checkpoint in the same MLflow run, unless ``fresh``; ``resume`` names the run
    to continue explicitly. ``parent``: the MLflow run to nest this one under (a sweep's).
    ``on_row(i, metrics, run_id)`` is called after row i is logged (a tuning trial reports to its
    pruner there, and stops the run by raising).
    """
    from continual.clip.backbone import load_backbone
    from continual.clip.features import image_inputs, text_inputs
    from continual.clip.heads import ClipClassifier, per_class, prompts
    from continual.run.pretrain import resolve_base
    from continual.tracking.store import default_artifact_root, ensure_store
    from continual.tracking.logger import MLflowLogger
    from continual.run.loss_components import training_curves

    # Everything that can be wrong with the input fails here, before any model is built.
    seed_everything(cfg.seed)
    checked = preflight(cfg)  # the same checks as --dry-run's
    strategy_cls, params, stream_fn, uri = checked.strategy_cls, checked.params, checked.stream_fn, checked.uri
    # Under torchrun: join the process group; only rank 0 speaks.
    device = distributed.init(cfg.device)
    if not distributed.is_main():
        echo, progress = (lambda _: None), False
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    distributed.local_batch_size(cfg.train.batch_size, cfg.train.accumulation_steps)  # divides over processes
    fingerprint = config_fingerprint(cfg)
    run_lock = RunLock(Path(cfg.output_dir) / "checkpoints")  # one process trains a run at a time
    if distributed.is_main():
        ensure_store(uri)  # created once, whole, however many runs start together
    run_id = distributed.broadcast_object(resumable_run(cfg, uri, fingerprint, resume, fresh, parent, run_lock)
                                          if distributed.is_main() else None)

    distributed.local_first_begin()  # one process per machine builds the base and caches features first
    trainable = strategy_cls.backbone_trainable or cfg.model.trainable
    backbone = load_backbone(cfg.model.name, cfg.model.pretrained or "", trainable, cfg.model.train_logit_scale,
                             resolve_base=lambda name: resolve_base(name, echo))

    augment = cfg.stream.augment and backbone.image_trunk is None  # cached trunk features cannot be augmented
    if cfg.stream.augment and not augment:
        echo("stream.augment: off, the frozen image trunk's features are computed once and cached "
             "(augmentation needs model.trainable=image or all)")

    def encode_images(ds, key, train=False):
        preprocess = backbone.preprocess_train if train and augment else backbone.preprocess
        return image_inputs(ds, key, preprocess, backbone.image_trunk, backbone.fingerprint("image"))

    def encode_texts(texts):
        return text_inputs(texts, backbone.tokenizer, backbone.text_trunk, backbone.fingerprint("text"))

    t0 = time.perf_counter()
    stream = stream_fn(cfg.stream, cfg.seed, encode_images, encode_texts)
    control = (CONTROLS.get(cfg.control.name)(cfg.control, encode_images, encode_texts)
               if cfg.control.name and cfg.stream.evaluate_on == "test" else None)  # off while test data is sealed (tuning)
    control = _without_stream_concepts(control, stream, echo)
    _check_control_unseen(control, backbone.base_meta)
    distributed.local_first_end()
    echo(f"data ready in {time.perf_counter() - t0:.0f} s: " + "; ".join(stream.plan()[:1] + (control.plan() if control else [])))

    templates = per_class(class_templates(cfg, stream), len(stream.class_names))
    classifier = ClipClassifier(backbone.model, stream.class_names, encode_texts(prompts(stream.class_names, templates)),
                                [len(t) for t in templates], cfg.model.train_templates)
    diagnostics = ProbeDiagnostics.from_config(cfg, stream, control, classifier)  # None when switched off
    T = len(stream.sessions)
    matrices = {name: np.full((T + 1, T), np.nan) for name in MATRICES[stream.kind]}
    control_rows: list[dict] = []
    sessions: list[dict] = []
    test_sizes = [s.n_test for s in stream.sessions]
    logger = MLflowLogger(
        uri, cfg.tracking.experiment, run_name=cfg.tracking.run_name or run_info.default_run_name(cfg), run_id=run_id,
        tags={"strategy": cfg.strategy.name, "stream": cfg.stream.name, "model": cfg.model.name,
              "pretrained": cfg.model.pretrained or "random init", "seed": str(cfg.seed),
              "config_fingerprint": fingerprint, "sessions": str(T), **({PARENT_TAG: parent} if parent else {})},
        params=to_dict(cfg),
        artifact_location=None if cfg.tracking.uri else default_artifact_root(cfg.output_dir),
    ) if distributed.is_main() else distributed.SilentLogger(None)
    logger.run_id = distributed.broadcast_object(logger.run_id)
    ckpt_dir = Path(cfg.output_dir) / "checkpoints" / logger.run_id
    if distributed.is_main():
        run_lock.acquire(logger.run_id)  # a new run: nobody else can hold it yet
    try:
        plugins = []
        if progress:
            from continual.run.progress import ProgressBar
            plugins.append(ProgressBar())
        seed_everything(cfg.seed)  # the same initialisation and data order whatever ran before
        context = StrategyContext(encode_texts, backbone.tokenizer, backbone.text_trunk,
                                  reference=reference_pairs(cfg, encode_images, encode_texts), encode_images=encode_images)
        strategy = strategy_cls(classifier=classifier, train=cfg.train, params=params, context=context,
                                plugins=plugins, device=str(device), eval_batch_size=cfg.eval.batch_size,
                                evaluator=training_curves(logger) if distributed.is_main() else None,
                                task_loss=task_loss(cfg, stream), session_lr=session_lrs(cfg, stream))
        columns, chance = run_info.session_labels(stream), run_info.chance_levels(stream, cfg.eval.label_space)

        def log_row(i: int, record: dict) -> dict:
            metrics = session_metrics({k: m[: i + 1] for k, m in matrices.items()}, control_rows, test_sizes, record)
            logger.log_metrics(metrics, step=i)
            logger.set_description(run_info.describe(cfg, metrics, i, T))
            rows = run_info.row_labels(i + 1)
            for name, m in matrices.items():
                what = "accuracy (%)" if name == "accuracy" else f"{name.replace('_r1', '').replace('2', '-to-')} R@1 (%)"
                logger.log_matrix(f"{name}_matrix", m[: i + 1], rows, columns, value_label=what, chance=chance,
                                  title=f"{cfg.strategy.name} on {cfg.stream.name}, seed {cfg.seed}: {what}")
            if "per_class" in record:  # accuracy of every class's test images, one row per session
                logger.log_matrix("per_class_accuracy", [s["per_class"] for s in sessions[: i + 1]], rows,
                                  stream.class_names, figures=False)
            return metrics

        def take_diagnostics(wait_all: bool = False) -> None:
            """The rows whose diagnostics were compared meanwhile: into their records, and their
            metrics held for the logger's next send (step: their row)."""
            for j, result in diagnostics.finished(wait_all) if diagnostics is not None else []:
                sessions[j].update(result)
                metrics = {**result["diagnostics"],
                           "session/diagnostics_compute_seconds": result["diagnostics_compute_seconds"]}
                logger.hold_metrics([(name, value, j) for name, value in metrics.items()])

        first = 0
        state = distributed.broadcast_object(checkpoint.load(ckpt_dir) if run_id and distributed.is_main() else None)
        if run_id and state is None:
            raise UserError(f"run {run_id} has no checkpoint in {ckpt_dir}; run without --resume to start afresh")
        if state is not None:
            k = state["session"]
            for name, rows in state["matrices"].items():
                matrices[name][: k + 1] = np.array(rows, dtype=float)
            control_rows[:], sessions[:] = state["control"], state["sessions"]
            checkpoint.restore(classifier.model, state)
            strategy.load_resume_state(state["strategy"])
            if diagnostics is not None:
                diagnostics.restore(state["extra"], k)
                diagnostics.resume(k, classifier.model, logger)
            if distributed.is_main():  # what a crash kept from the log (the logger skips points already logged)
                logger.hold_metrics(state.get("held_metrics", []))  # the session's training curves
                log_row(k, sessions[k])
            first = k + 1
            echo(f"MLflow run {logger.run_id} in {uri}: resuming after session {k} of {T}")
        else:
            echo(f"MLflow run {logger.run_id} in {uri}")
            logger.log_text(to_yaml(cfg), "config.yaml")
            logger.log_text("\n".join(plan_lines(stream, control)) + "\n", "plan.txt")
        for i in range(first, T + 1):
            record: dict[str, Any] = {"session": i}
            if i > 0:
                experience = stream.benchmark.train_stream[i - 1]
                start, seen_before = time.perf_counter(), strategy.examples_seen
                strategy.train(experience, eval_streams=[])
                record["train_seconds"] = time.perf_counter() - start
                record["examples"] = strategy.examples_seen - seen_before
                record["examples_per_s"] = record["examples"] / max(record["train_seconds"], 1e-9)
            record["trainable_params"] = sum(p.numel() for p in strategy.model.parameters() if p.requires_grad)
            start = time.perf_counter()
            row = evaluate_row(classifier, stream, cfg, seen=i)
            for name in matrices:
                matrices[name][i] = row.pop(name)
            record.update(row)  # per-session retrieval details (image-text), per-class accuracy (classification)
            if control is not None:
                from continual.run.evaluation import retrieval
                control_rows.append(retrieval(classifier.model, control, cfg.eval.batch_size))
            record["eval_seconds"] = time.perf_counter() - start
            if diagnostics is not None:  # spatial disorder since row 0 and since the row before,
                # compared on a worker thread while the next session trains
                record["diagnostics_seconds"] = diagnostics.submit(i, classifier.model, logger)
            sessions.append(record)
            take_diagnostics(wait_all=i == T)  # the last row's before the last checkpoint
            if distributed.is_main():
                checkpoint.save(ckpt_dir, i, classifier.model, {
                    "matrices": {k: m[: i + 1].tolist() for k, m in matrices.items()},
                    "control": control_rows, "sessions": sessions,
                    "strategy": strategy.resume_state(), "run_id": logger.run_id,
                    "held_metrics": logger.held_metrics()},  # the session's training curves, sent by log_row
                    extra=diagnostics.tensors() if diagnostics is not None else None)
            metrics = log_row(i, record)
            echo(describe_row(i, metrics))
            if on_row is not None:
                on_row(i, metrics, logger.run_id)
        take_diagnostics(wait_all=True)
        summary = {k: v for k, v in session_metrics(matrices, control_rows, test_sizes, sessions[-1]).items()
                   if not k.startswith("session/")}
        summary["total/train_seconds"] = sum(s.get("train_seconds", 0.0) for s in sessions)
        summary["total/eval_seconds"] = sum(s["eval_seconds"] for s in sessions)
        logger.log_metrics({k: v for k, v in summary.items() if k.startswith("total/")}, step=T)
        logger.log_json({"summary": summary, "sessions": sessions, "control": control_rows,
                         **{k: m.tolist() for k, m in matrices.items()}}, "summary.json")
        logger.finish("FINISHED")
    except BaseException as exc:
        if diagnostics is not None:
            diagnostics.close()  # no figure handed to the logger after it ends the run
        faults.end_run(logger, exc, ckpt_dir)  # KILLED on a signal, else FAILED; raises the one line to show
        raise
    finally:
        if diagnostics is not None:
            diagnostics.close()
        run_lock.release()
    first = next(iter(matrices.values()))
    return RunResult(logger.run_id, uri, first, control_rows, summary, sessions, matrices)


def config_fingerprint(cfg: DictConfig) -> str:
    """Identifies a config (resolved, run name aside): the same command finds its unfinished run."""
    data = to_dict(cfg)
    data["tracking"].pop("run_name", None)
    return hashlib.blake2b(json.dumps(data, sort_keys=True).encode(), digest_size=10).hexdigest()


def resumable_run(cfg: DictConfig, uri: str, fingerprint: str, resume: Optional[str], fresh: bool,
                  parent: Optional[str] = None, lock: Optional[RunLock] = None) -> Optional[str]:
    """The run to continue: ``resume`` (checked to be of this config and unfinished), else the
    newest unfinished run of this config (under the same ``parent``) that has a checkpoint, else
    None (a new run). With ``lock``, the run returned is held by this process (RunBusyError if
    another holds it)."""
    from continual.tracking.store import find_runs

    check_resume_flags(resume, fresh)
    if resume:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        try:
            found = MlflowClient(uri).get_run(resume)
        except MlflowException:
            raise UserError(f"--resume {resume}: no such run in {uri}") from None
        if found.data.tags.get("config_fingerprint") != fingerprint:
            raise UserError(f"--resume {resume}: that run was started with a different config; "
                            "give the same config and overrides, or drop --resume")
        return _claim(resume, uri, lock)
    if fresh:
        return None
    for candidate in find_runs(uri, cfg.tracking.experiment, "config_fingerprint", fingerprint):
        folder = Path(cfg.output_dir) / "checkpoints" / candidate.info.run_id
        if candidate.data.tags.get(PARENT_TAG) != parent:
            continue
        if candidate.info.status != "FINISHED" and (folder / checkpoint.STATE_FILE).exists():
            return _claim(candidate.info.run_id, uri, lock)
    return None


def check_resume_flags(resume: Optional[str], fresh: bool) -> None:
    if resume and fresh:
        raise UserError(f"--resume {resume} and --fresh contradict each other: give --resume to continue that run, "
                        "or --fresh to start a new one")


def _claim(run_id: str, uri: str, lock: Optional[RunLock]) -> str:
    """Hold ``run_id`` (if ``lock``), then check that it is unfinished (another process may just
    have finished it)."""
    from mlflow import MlflowClient

    if lock is not None:
        lock.acquire(run_id)
    if MlflowClient(uri).get_run(run_id).info.status == "FINISHED":
        if lock is not None:
            lock.release()
        raise UserError(f"run {run_id} is finished: every session is trained and logged, nothing to resume; "
                        "see it with `continual ui`, or run without --resume to train it again as a new run")
    return run_id


def reference_pairs(cfg: DictConfig, encode_images: Any, encode_texts: Any) -> Optional[Callable]:
    """Reference pairs for methods that need data beyond the sessions (ZSCL): the complement of
    the control split, i.e. the base's own training pairs. Built on first use."""
    if not cfg.control.name:
        return None

    @functools.cache
    def build():
        return CONTROLS.get(cfg.control.name)(cfg.control, encode_images, encode_texts, complement=True)

    return build


def plan_lines(stream: Any, control: Any) -> list[str]:
    return stream.plan() + (control.plan() if control is not None else [])


def evaluate_row(classifier: Any, stream: Any, cfg: DictConfig, seen: int) -> dict[str, Any]:
    """Every session's test score (future ones included) for the current model: a value per
    matrix (``MATRICES[stream.kind]``), as arrays over sessions; image-text streams add each
    session's full retrieval metrics under ``retrieval``, classification streams each class's
    accuracy under ``per_class``."""
    from continual.run.evaluation import class_counts, retrieval

    if stream.kind == "pairs":
        scores = [retrieval(classifier.model, test, cfg.eval.batch_size) for test in stream.tests]
        return {"i2t_r1": np.array([s["i2t_r1"] for s in scores]), "t2i_r1": np.array([s["t2i_r1"] for s in scores]),
                "retrieval": scores}
    row = np.empty(len(stream.sessions))
    correct = total = np.zeros(len(stream.class_names))
    seen_classes = [c for s in stream.sessions[:seen] for c in s.classes]
    for j, session in enumerate(stream.sessions):
        classes = {"all": None, "session": session.classes,
                   "seen": sorted(set(seen_classes) | set(session.classes))}[cfg.eval.label_space]
        hits, items = class_counts(classifier, stream.benchmark.test_stream[j].dataset, classes, cfg.eval.batch_size)
        row[j] = 100.0 * hits.sum() / max(items.sum(), 1.0)
        correct, total = correct + hits, total + items
    with np.errstate(invalid="ignore", divide="ignore"):  # classes without test images: NaN
        return {"accuracy": row, "per_class": (100.0 * correct / total).tolist()}


def matrix_metrics(R: np.ndarray, test_sizes: list[int], prefix: str) -> dict[str, float]:
    """The last row's cells and every summary metric of one matrix. Accuracy keeps its historic
    names (acc/session_j, acc/seen, cl/*, mtil/*); others are prefixed (i2t/session_j,
    i2t/seen, i2t/cl/*, i2t/mtil/*)."""
    i = R.shape[0] - 1
    group = "" if prefix == "acc" else f"{prefix}/"
    out: dict[str, float] = {f"{prefix}/session_{j + 1}": float(v) for j, v in enumerate(R[i])}
    if i > 0:
        out[f"{prefix}/seen"] = float(M.accuracy_on_seen(R, True, test_sizes)[-1])
        summary = M.summarize(R, initial_row=True, weights=test_sizes)
        for key in ("avg_acc", "avg_inc_acc", "forgetting", "bwt", "fwt", "pd"):
            out[f"{group}cl/{key}"] = summary[key]
        for key in ("transfer", "avg", "last"):
            out[f"{group}mtil/{key}"] = summary[key]
    return out


def session_metrics(matrices: dict[str, np.ndarray], control_rows: list[dict], test_sizes: list[int],
                    record: dict) -> dict[str, float]:
    """Every metric logged after the session of the matrices' last row."""
    out: dict[str, float] = {}
    for name, R in matrices.items():
        out.update(matrix_metrics(R, test_sizes, _prefix(name)))
    for j, scores in enumerate(record.get("retrieval", [])):  # R@5/10, median ranks per session
        out.update({f"retrieval/session_{j + 1}/{k}": float(v) for k, v in scores.items()})
    if control_rows:
        now, first = control_rows[-1], control_rows[0]
        out.update({f"control/{k}": float(v) for k, v in now.items()})
        r1_now = (now["i2t_r1"] + now["t2i_r1"]) / 2
        r1_first = (first["i2t_r1"] + first["t2i_r1"]) / 2
        out["control/r1_mean"] = r1_now
        ret = M.retention(r1_now, r1_first)
        out["retention/absolute"], out["retention/relative"] = ret["absolute"], ret["relative"]
    out.update(record.get("diagnostics", {}))
    for key in ("train_seconds", "eval_seconds", "diagnostics_seconds", "diagnostics_compute_seconds", "examples",
                "examples_per_s", "trainable_params"):
        if key in record:
            out[f"session/{key}"] = float(record[key])
    return out


def _prefix(matrix: str) -> str:
    return next(p for kinds in MATRICES.values() for name, p in kinds.items() if name == matrix)


def describe_row(i: int, m: dict[str, float]) -> str:
    parts = [f"{'before training' if i == 0 else f'after session {i}'}:"]
    prefixes = [p for p in ("acc", "i2t", "t2i") if f"{p}/session_1" in m]
    for p in prefixes:
        what = "acc" if p == "acc" else f"{p} R@1"
        group = "" if p == "acc" else f"{p}/"
        if i == 0:
            parts.append(f"zero-shot {what} {np.mean([v for k, v in m.items() if k.startswith(f'{p}/session_')]):.1f}%")
        else:
            parts.append(f"seen {what} {m[f'{p}/seen']:.1f}%")
            if not np.isnan(m[f"{group}cl/forgetting"]):
                parts.append(f"forgetting {m[f'{group}cl/forgetting']:.1f}")
    if "control/r1_mean" in m:
        parts.append(f"control R@1 {m['control/r1_mean']:.1f}% (retention {m['retention/relative']:.2f})")
    if "session/train_seconds" in m:
        parts.append(f"train {m['session/train_seconds']:.1f} s ({m['session/examples_per_s']:,.0f} ex/s)")
    return " | ".join(parts)


def _check_control_unseen(control: Any, base_meta: Optional[dict]) -> None:
    """A base built here stores its held-out keys: the control data must be among them."""
    if control is None or not base_meta or "heldout_keys" not in base_meta:
        return
    heldout = set(json.loads(base_meta["heldout_keys"]))
    leaked = [k for k in control.keys if k not in heldout]
    if leaked:
        raise UserError(f"control data overlaps the base's training data ({len(leaked)} pairs, e.g. {leaked[0]}); "
                        "set control.heldout_fraction and control.split_seed to the base's recipe")


# -- what a stream asks of the run -------------------------------------------------------------
def class_templates(cfg: DictConfig, stream: Any) -> Any:
    """The stream's own templates (per class), captions as they are, or model.templates."""
    if stream.templates is not None:
        return stream.templates
    return ["{}"] if stream.kind == "pairs" else list(cfg.model.templates)


def session_lrs(cfg: DictConfig, stream: Any) -> dict[int, float]:
    """train.session_lr by session name -> by experience index."""
    index = {s.name: s.index - 1 for s in stream.sessions if s.name}
    return {index[name]: float(lr) for name, lr in cfg.train.session_lr.items()}


def _without_stream_concepts(control: Any, stream: Any, echo: Echo) -> Any:
    """Control data is never trained on: drop control pairs whose concept the stream trains on
    (image-text streams drawn from the same sources)."""
    if control is None or not getattr(stream, "concepts", None) or not control.concepts:
        return control
    trained = set(stream.concepts)
    keep_images = [i for i, c in enumerate(control.concepts) if c not in trained]
    if len(keep_images) == len(control.keys):
        return control
    if not keep_images:
        raise UserError(f"every control pair shares a concept with stream '{stream.name}'; "
                        "use other control.sources or stream.sources")
    from continual.stream import PairSet

    new_index = {old: new for new, old in enumerate(keep_images)}
    captions = [c for c, img in enumerate(control.caption_image.tolist()) if img in new_index]
    echo(f"control: left out {len(control.keys) - len(keep_images)} pairs whose concepts the stream trains on")
    inputs, texts = control.image_inputs, control.text_inputs
    if inputs is not None:  # None in a plan
        inputs = inputs[keep_images] if torch.is_tensor(inputs) else torch.utils.data.Subset(inputs, keep_images)
        texts = texts[captions]
    return PairSet(control.name, inputs, texts,
                   torch.tensor([new_index[int(control.caption_image[c])] for c in captions]),
                   [control.keys[i] for i in keep_images], [control.concepts[i] for i in keep_images])
