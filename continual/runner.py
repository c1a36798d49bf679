"""The experiment runner: train session by session, evaluate everything after each, log it.

For a stream of T sessions the runner fills the accuracy matrix R ((T+1) x T): row 0 is the
model before any training; after training session i, row i holds the accuracy on every
session's test data, future sessions included. After each row it also evaluates the control
data (never trained on), computes every summary metric of the rows so far, checkpoints the
trained parameters and the runner's state, and logs all of it to MLflow with step = i.

Under torchrun (see :mod:`continual.distributed`) every process runs this same function on its
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

from continual import checkpoint, distributed
from continual import metrics as M
from continual.config import strategy_params, to_dict, to_yaml
from continual.context import StrategyContext
from continual.errors import UserError
from continual.registry import CONTROLS, STRATEGIES, STREAMS

Echo = Callable[[str], None]


@dataclass
class RunResult:
    run_id: str
    tracking_uri: str
    accuracy: np.ndarray  # (T+1) x T
    control: list[dict]  # retrieval metrics per row
    summary: dict[str, float]
    sessions: list[dict] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    """One seed fixes the class order, the sampling, the initialisation and the data order."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def plan(cfg: DictConfig) -> list[str]:
    """The run's plan, from the config and the data (no model is built, nothing trains)."""
    strategy_cls = STRATEGIES.get(cfg.strategy.name, "strategy.name")
    params = strategy_params(cfg, strategy_cls.Params)
    stream = STREAMS.get(cfg.stream.name, "stream.name")(cfg.stream, cfg.seed)
    lines = [f"model {cfg.model.name} (pretrained: {cfg.model.pretrained or 'random init'}, trainable: "
             f"{strategy_cls.backbone_trainable or cfg.model.trainable}), templates {list(cfg.model.templates)}"]
    lines.append(f"strategy {cfg.strategy.name}: {strategy_cls.__doc__.strip().splitlines()[0]}")
    if params is not None:
        lines.append("  params: " + ", ".join(f"{k}={v}" for k, v in vars(params).items()))
    t = cfg.train
    lines.append(f"train: {t.epochs} epochs/session, batch {t.batch_size}, {t.optimizer} lr {t.lr} "
                 f"(wd {t.weight_decay}, {t.scheduler}, warm-up {t.warmup_steps}), label smoothing "
                 f"{t.label_smoothing}, loss over {t.label_space} classes; eval among {cfg.eval.label_space} classes")
    lines += stream.plan()
    if cfg.control.name:
        lines += CONTROLS.get(cfg.control.name, "control.name")(cfg.control).plan()
    lines.append(f"tracking: {tracking_uri(cfg)} (experiment '{cfg.tracking.experiment}')")
    return lines


def tracking_uri(cfg: DictConfig) -> str:
    from continual.tracking import default_tracking_uri

    return cfg.tracking.uri or default_tracking_uri(cfg.output_dir)


def run(cfg: DictConfig, echo: Echo = print, progress: bool = True, resume: Optional[str] = None,
        fresh: bool = False) -> RunResult:
    """Run the experiment ``cfg`` end to end and return its matrices and summary.

    An unfinished run of the same config in the same experiment (crashed, killed) is continued
    from its last checkpoint in the same MLflow run, unless ``fresh``; ``resume`` names the run
    to continue explicitly.
    """
    from continual.backbone import load_backbone
    from continual.features import image_inputs, text_inputs
    from continual.heads import ClipClassifier, prompts
    from continual.pretrain import resolve_base
    from continual.tracking import MLflowLogger, check_tracking_uri, default_artifact_root

    # Under torchrun: join the process group; only rank 0 speaks.
    device = distributed.init(cfg.device)
    if not distributed.is_main():
        echo, progress = (lambda _: None), False
    # Everything that can be wrong with the input fails here, before any model is built.
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    strategy_cls = STRATEGIES.get(cfg.strategy.name, "strategy.name")
    params = strategy_params(cfg, strategy_cls.Params)
    stream_fn = STREAMS.get(cfg.stream.name, "stream.name")
    stream_fn(cfg.stream, cfg.seed)  # data present and the split valid
    distributed.local_batch_size(cfg.train.batch_size, cfg.train.accumulation_steps)  # divides over processes
    uri = tracking_uri(cfg)
    check_tracking_uri(uri)
    fingerprint = config_fingerprint(cfg)
    run_id = distributed.broadcast_object(resumable_run(cfg, uri, fingerprint, resume, fresh) if distributed.is_main() else None)

    distributed.local_first_begin()  # one process per machine builds the base and caches features first
    trainable = strategy_cls.backbone_trainable or cfg.model.trainable
    backbone = load_backbone(cfg.model.name, cfg.model.pretrained or "", trainable, cfg.model.train_logit_scale,
                             resolve_base=lambda name: resolve_base(name, echo))

    def encode_images(ds, key):
        return image_inputs(ds, key, backbone.preprocess, backbone.image_trunk, backbone.fingerprint("image"))

    def encode_texts(texts):
        return text_inputs(texts, backbone.tokenizer, backbone.text_trunk, backbone.fingerprint("text"))

    t0 = time.perf_counter()
    stream = stream_fn(cfg.stream, cfg.seed, encode_images)
    control = CONTROLS.get(cfg.control.name)(cfg.control, encode_images, encode_texts) if cfg.control.name else None
    _check_control_unseen(control, backbone.base_meta)
    distributed.local_first_end()
    echo(f"data ready in {time.perf_counter() - t0:.0f} s: " + "; ".join(stream.plan()[:1] + (control.plan() if control else [])))

    templates = list(cfg.model.templates)
    classifier = ClipClassifier(backbone.model, stream.class_names,
                                encode_texts(prompts(stream.class_names, templates)), len(templates))
    T = len(stream.sessions)
    R = np.full((T + 1, T), np.nan)
    control_rows: list[dict] = []
    sessions: list[dict] = []
    test_sizes = [s.n_test for s in stream.sessions]
    logger = MLflowLogger(
        uri, cfg.tracking.experiment, run_name=cfg.tracking.run_name, run_id=run_id,
        tags={"strategy": cfg.strategy.name, "stream": cfg.stream.name, "model": cfg.model.name,
              "pretrained": cfg.model.pretrained or "random init", "seed": str(cfg.seed),
              "config_fingerprint": fingerprint},
        params=to_dict(cfg),
        artifact_location=None if cfg.tracking.uri else default_artifact_root(cfg.output_dir),
    ) if distributed.is_main() else distributed.SilentLogger(None)
    logger.run_id = distributed.broadcast_object(logger.run_id)
    ckpt_dir = Path(cfg.output_dir) / "checkpoints" / logger.run_id
    try:
        plugins = []
        if progress:
            from continual.progress import ProgressBar
            plugins.append(ProgressBar())
        seed_everything(cfg.seed)  # the same initialisation and data order whatever ran before
        context = StrategyContext(encode_texts, backbone.tokenizer, backbone.text_trunk,
                                  reference=reference_pairs(cfg, encode_images, encode_texts))
        strategy = strategy_cls(classifier=classifier, train=cfg.train, params=params, context=context,
                                plugins=plugins, device=str(device), eval_batch_size=cfg.eval.batch_size,
                                evaluator=training_curves(logger) if distributed.is_main() else None)
        matrix_labels = [f"session {j}" for j in range(1, T + 1)]

        def log_row(i: int, record: dict) -> dict:
            metrics = session_metrics(R[: i + 1], control_rows, test_sizes, record)
            logger.log_metrics(metrics, step=i)
            labels = ["before training"] + [f"after session {k}" for k in range(1, i + 1)]
            logger.log_matrix("accuracy_matrix", R[: i + 1], labels, matrix_labels,
                              title=f"{cfg.strategy.name} on {cfg.stream.name}: accuracy (%)")
            return metrics

        first = 0
        state = distributed.broadcast_object(checkpoint.load(ckpt_dir) if run_id and distributed.is_main() else None)
        if run_id and state is None:
            raise UserError(f"run {run_id} has no checkpoint in {ckpt_dir}; run without --resume to start afresh")
        if state is not None:
            k = state["session"]
            R[: k + 1] = np.array(state["accuracy"], dtype=float)
            control_rows[:], sessions[:] = state["control"], state["sessions"]
            checkpoint.restore(classifier.model, state)
            strategy.load_resume_state(state["strategy"])
            if distributed.is_main() and k not in _logged_steps(uri, logger.run_id):  # crash between checkpoint and log
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
            R[i] = evaluate_row(classifier, stream, strategy, cfg, seen=i)
            if control is not None:
                from continual.evaluation import retrieval
                control_rows.append(retrieval(classifier.model, control, cfg.eval.batch_size))
            record["eval_seconds"] = time.perf_counter() - start
            sessions.append(record)
            if distributed.is_main():
                checkpoint.save(ckpt_dir, i, classifier.model, {
                    "accuracy": R[: i + 1].tolist(), "control": control_rows, "sessions": sessions,
                    "strategy": strategy.resume_state(), "run_id": logger.run_id})
            echo(describe_row(i, log_row(i, record)))
        summary = {k: v for k, v in session_metrics(R, control_rows, test_sizes, sessions[-1]).items()
                   if not k.startswith("session/")}
        summary["total/train_seconds"] = sum(s.get("train_seconds", 0.0) for s in sessions)
        summary["total/eval_seconds"] = sum(s["eval_seconds"] for s in sessions)
        logger.log_metrics({k: v for k, v in summary.items() if k.startswith("total/")}, step=T)
        logger.log_json({"summary": summary, "sessions": sessions, "accuracy": R.tolist(), "control": control_rows},
                        "summary.json")
        logger.finish("FINISHED")
    except BaseException as exc:
        logger.finish("FAILED", error=f"{type(exc).__name__}: {exc}")
        raise
    return RunResult(logger.run_id, uri, R, control_rows, summary, sessions)


def config_fingerprint(cfg: DictConfig) -> str:
    """Identifies a config (resolved, run name aside): the same command finds its unfinished run."""
    data = to_dict(cfg)
    data["tracking"].pop("run_name", None)
    return hashlib.blake2b(json.dumps(data, sort_keys=True).encode(), digest_size=10).hexdigest()


def resumable_run(cfg: DictConfig, uri: str, fingerprint: str, resume: Optional[str], fresh: bool) -> Optional[str]:
    """The run to continue: ``resume`` (checked to be of this config), else the newest unfinished
    run of this config that has a checkpoint, else None (a new run)."""
    from continual.tracking import find_runs

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
        return resume
    if fresh:
        return None
    for candidate in find_runs(uri, cfg.tracking.experiment, "config_fingerprint", fingerprint):
        folder = Path(cfg.output_dir) / "checkpoints" / candidate.info.run_id
        if candidate.info.status != "FINISHED" and (folder / checkpoint.STATE_FILE).exists():
            return candidate.info.run_id
    return None


def _logged_steps(uri: str, run_id: str) -> list[int]:
    from continual.tracking import metric_steps

    return metric_steps(uri, run_id, "acc/session_1")


def reference_pairs(cfg: DictConfig, encode_images: Any, encode_texts: Any) -> Optional[Callable]:
    """Reference pairs for methods that need data beyond the sessions (ZSCL): the complement of
    the control split, i.e. the base's own training pairs. Built on first use."""
    if not cfg.control.name:
        return None

    @functools.cache
    def build():
        return CONTROLS.get(cfg.control.name)(cfg.control, encode_images, encode_texts, complement=True)

    return build


def training_curves(logger: Any) -> Any:
    """Avalanche's own per-epoch training loss, logged to MLflow through our logger."""
    from avalanche.evaluation.metrics import loss_metrics
    from avalanche.training.plugins import EvaluationPlugin

    return EvaluationPlugin(loss_metrics(epoch=True), loggers=[logger])


def plan_lines(stream: Any, control: Any) -> list[str]:
    return stream.plan() + (control.plan() if control is not None else [])


def evaluate_row(classifier: Any, stream: Any, strategy: Any, cfg: DictConfig, seen: int) -> np.ndarray:
    """Accuracy on every session's test data (future ones included) for the current model."""
    from continual.evaluation import accuracy

    row = np.empty(len(stream.sessions))
    seen_classes = [c for s in stream.sessions[:seen] for c in s.classes]
    for j, session in enumerate(stream.sessions):
        classes = None if cfg.eval.label_space == "all" else sorted(set(seen_classes) | set(session.classes))
        row[j] = accuracy(classifier, stream.benchmark.test_stream[j].dataset, classes, cfg.eval.batch_size)
    return row


def session_metrics(R: np.ndarray, control_rows: list[dict], test_sizes: list[int], record: dict) -> dict[str, float]:
    """Every metric logged after the session of the last row of ``R``."""
    i = R.shape[0] - 1
    out: dict[str, float] = {f"acc/session_{j + 1}": float(v) for j, v in enumerate(R[i])}
    if i > 0:
        out["acc/seen"] = float(M.accuracy_on_seen(R, True, test_sizes)[-1])
        summary = M.summarize(R, initial_row=True, weights=test_sizes)
        for key in ("avg_acc", "avg_inc_acc", "forgetting", "bwt", "fwt", "pd"):
            out[f"cl/{key}"] = summary[key]
        for key in ("transfer", "avg", "last"):
            out[f"mtil/{key}"] = summary[key]
    if control_rows:
        now, first = control_rows[-1], control_rows[0]
        out.update({f"control/{k}": float(v) for k, v in now.items()})
        r1_now = (now["i2t_r1"] + now["t2i_r1"]) / 2
        r1_first = (first["i2t_r1"] + first["t2i_r1"]) / 2
        out["control/r1_mean"] = r1_now
        ret = M.retention(r1_now, r1_first)
        out["retention/absolute"], out["retention/relative"] = ret["absolute"], ret["relative"]
    for key in ("train_seconds", "eval_seconds", "examples", "examples_per_s", "trainable_params"):
        if key in record:
            out[f"session/{key}"] = float(record[key])
    return out


def describe_row(i: int, m: dict[str, float]) -> str:
    parts = [f"{'before training' if i == 0 else f'after session {i}'}:"]
    if i == 0:
        accs = [v for k, v in m.items() if k.startswith("acc/session_")]
        parts.append(f"zero-shot acc {np.mean(accs):.1f}%")
    else:
        parts.append(f"seen acc {m['acc/seen']:.1f}%")
        if not np.isnan(m["cl/forgetting"]):
            parts.append(f"forgetting {m['cl/forgetting']:.1f}")
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
