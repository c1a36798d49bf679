"""The experiment runner: train session by session, evaluate everything after each, log it.

For a stream of T sessions the runner fills the session matrices ((T+1) x T): row 0 is the
model before any training; after training session i, row i holds the score on every session's
test data, future sessions included: accuracy on classification streams, image-to-text and
text-to-image R@1 (one matrix per direction) on image-text streams. After each row it also
evaluates the control data (never trained on), computes every summary metric of the rows so
far, checkpoints the trained parameters and the runner's state, and logs all of it to MLflow
with step = i. The rows and what is logged of them: :mod:`continual.run.session`; the metrics'
names: :mod:`continual.tracking.names`.

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
from continual.run import session
from continual.tracking import labels as run_info
from continual.tracking import names as N
from continual.config import fidelity
from continual.system import distributed
from continual.config.load import to_dict, to_yaml
from continual.context import StrategyContext
from continual.errors import UserError
from continual.system.locks import RunLock
from continual.run.preflight import preflight, task_loss, tracking_uri
from continual.run.probes import ProbeDiagnostics, plan_line
from continual.registry import CONTROLS
from continual.system.signals import sigterm_as_interrupt

Echo = Callable[[str], None]


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
    ready = prepare(cfg, echo, progress, resume, fresh, parent)  # everything wrong with the input fails here
    rows = session.Rows.of(ready.stream)
    T = rows.n_sessions
    try:
        strategy = _strategy(ready)
        log = session.SessionLog(ready.logger, cfg, ready.stream, rows)
        first = _resume_or_start(ready, strategy, rows, log)
        for i in range(first, T + 1):
            record = _train(strategy, ready.stream, i)
            _evaluate(ready, rows, record, i)
            log.take_diagnostics(ready.diagnostics, wait_all=i == T)  # the last row's before the last checkpoint
            if distributed.is_main():
                _checkpoint(ready, strategy, rows, i)
            metrics = log.row(i)
            ready.echo(session.describe_row(i, metrics))
            if on_row is not None:
                on_row(i, metrics, ready.logger.run_id)
        log.take_diagnostics(ready.diagnostics, wait_all=True)
        summary = log.finish()
    except BaseException as exc:
        if ready.diagnostics is not None:
            ready.diagnostics.close()  # no figure handed to the logger after it ends the run
        faults.end_run(ready.logger, exc, ready.ckpt_dir)  # KILLED on a signal, else FAILED; raises the one line to show
        raise
    finally:
        if ready.diagnostics is not None:
            ready.diagnostics.close()
        ready.run_lock.release()
    return RunResult(ready.logger.run_id, ready.uri, next(iter(rows.matrices.values())), rows.control, summary,
                     rows.sessions, rows.matrices)


# -- the run's parts, in the order it calls them -----------------------------------------------
@dataclass
class Encoders:
    """The model's inputs of images and of texts: the frozen trunks' features (computed once and
    cached), or preprocessed images and tokens where a trunk trains."""

    backbone: Any
    augment: bool  # training images augmented (only where the image trunk trains: cached features cannot be)

    def images(self, ds: Any, key: str, train: bool = False) -> Any:
        from continual.clip.features import image_inputs

        b = self.backbone
        preprocess = b.preprocess_train if train and self.augment else b.preprocess
        return image_inputs(ds, key, preprocess, b.image_trunk, b.fingerprint("image"))

    def texts(self, texts: Any) -> Any:
        from continual.clip.features import text_inputs

        b = self.backbone
        return text_inputs(texts, b.tokenizer, b.text_trunk, b.fingerprint("text"))


@dataclass
class Prepared:
    """A run ready to train (:func:`prepare`): its checked input, its model and data, its MLflow run."""

    cfg: DictConfig
    echo: Echo  # silent on ranks other than 0, as is the progress bar
    progress: bool
    uri: str
    resumed: Optional[str]  # the unfinished run continued, None for a new one
    run_lock: RunLock
    strategy_cls: Any
    params: Any
    device: Any
    encoders: Encoders
    stream: Any
    control: Any
    classifier: Any
    diagnostics: Optional[ProbeDiagnostics]
    logger: Any
    ckpt_dir: Path


def prepare(cfg: DictConfig, echo: Echo, progress: bool, resume: Optional[str], fresh: bool,
            parent: Optional[str]) -> Prepared:
    """Check the input (before any model is built), join the process group under torchrun, find
    the run to continue, build the model and the data, open the MLflow run and hold it."""
    from continual.tracking.store import ensure_store

    seed_everything(cfg.seed)
    checked = preflight(cfg)  # the same checks as --dry-run's
    device = distributed.init(cfg.device)  # under torchrun: join the process group; only rank 0 speaks
    if not distributed.is_main():
        echo, progress = (lambda _: None), False
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    distributed.local_batch_size(cfg.train.batch_size, cfg.train.accumulation_steps)  # divides over processes
    fingerprint = config_fingerprint(cfg)
    run_lock = RunLock(Path(cfg.output_dir) / "checkpoints")  # one process trains a run at a time
    if distributed.is_main():
        ensure_store(checked.uri)  # created once, whole, however many runs start together
    resumed = distributed.broadcast_object(resumable_run(cfg, checked.uri, fingerprint, resume, fresh, parent, run_lock)
                                           if distributed.is_main() else None)
    encoders, stream, control = _model_and_data(cfg, checked.strategy_cls, checked.stream_fn, echo)
    classifier = _classifier(cfg, encoders, stream)
    diagnostics = ProbeDiagnostics.from_config(cfg, stream, control, classifier)  # None when switched off
    logger = _open_logger(cfg, checked.uri, resumed, fingerprint, len(stream.sessions), parent)
    if distributed.is_main():
        run_lock.acquire(logger.run_id)  # a new run: nobody else can hold it yet
    return Prepared(cfg, echo, progress, checked.uri, resumed, run_lock, checked.strategy_cls, checked.params, device,
                    encoders, stream, control, classifier, diagnostics, logger,
                    Path(cfg.output_dir) / "checkpoints" / logger.run_id)


def _model_and_data(cfg: DictConfig, strategy_cls: Any, stream_fn: Callable, echo: Echo) -> tuple[Encoders, Any, Any]:
    """The backbone's encoders, the stream and the control data (None without one)."""
    from continual.clip.backbone import load_backbone
    from continual.run.pretrain import resolve_base

    distributed.local_first_begin()  # one process per machine builds the base and caches features first
    trainable = strategy_cls.backbone_trainable or cfg.model.trainable
    backbone = load_backbone(cfg.model.name, cfg.model.pretrained or "", trainable, cfg.model.train_logit_scale,
                             resolve_base=lambda name: resolve_base(name, echo))
    encoders = Encoders(backbone, augment=cfg.stream.augment and backbone.image_trunk is None)
    if cfg.stream.augment and not encoders.augment:
        echo("stream.augment: off, the frozen image trunk's features are computed once and cached "
             "(augmentation needs model.trainable=image or all)")
    t0 = time.perf_counter()
    stream = stream_fn(cfg.stream, cfg.seed, encoders.images, encoders.texts)
    control = (CONTROLS.get(cfg.control.name)(cfg.control, encoders.images, encoders.texts)
               if cfg.control.name and cfg.stream.evaluate_on == "test" else None)  # off while test data is sealed (tuning)
    control = _without_stream_concepts(control, stream, echo)
    _check_control_unseen(control, backbone.base_meta)
    distributed.local_first_end()
    echo(f"data ready in {time.perf_counter() - t0:.0f} s: " + "; ".join(stream.plan()[:1] + (control.plan() if control else [])))
    return encoders, stream, control


def _classifier(cfg: DictConfig, encoders: Encoders, stream: Any) -> Any:
    """The zero-shot classifier over the stream's classes, from their prompts."""
    from continual.clip.heads import ClipClassifier, per_class, prompts

    templates = per_class(class_templates(cfg, stream), len(stream.class_names))
    return ClipClassifier(encoders.backbone.model, stream.class_names,
                          encoders.texts(prompts(stream.class_names, templates)), [len(t) for t in templates],
                          cfg.model.train_templates)


def _open_logger(cfg: DictConfig, uri: str, run_id: Optional[str], fingerprint: str, n_sessions: int,
                 parent: Optional[str]) -> Any:
    """The run's MLflow logger (a silent one on ranks other than 0): a new run, or ``run_id`` re-opened."""
    from continual.tracking.logger import MLflowLogger
    from continual.tracking.store import default_artifact_root

    logger = MLflowLogger(
        uri, cfg.tracking.experiment, run_name=cfg.tracking.run_name or run_info.default_run_name(cfg), run_id=run_id,
        tags={"strategy": cfg.strategy.name, "stream": cfg.stream.name, "model": cfg.model.name,
              "pretrained": cfg.model.pretrained or "random init", N.SEED_TAG: str(cfg.seed),
              N.FINGERPRINT_TAG: fingerprint, N.SESSIONS_TAG: str(n_sessions), **({N.PARENT_TAG: parent} if parent else {})},
        params=to_dict(cfg),
        artifact_location=None if cfg.tracking.uri else default_artifact_root(cfg.output_dir),
    ) if distributed.is_main() else distributed.SilentLogger(None)
    logger.run_id = distributed.broadcast_object(logger.run_id)
    return logger


def _strategy(ready: Prepared) -> Any:
    """The strategy, seeded afresh: the same initialisation and data order whatever ran before."""
    from continual.run.loss_components import training_curves

    cfg, encoders = ready.cfg, ready.encoders
    plugins = []
    if ready.progress:
        from continual.run.progress import ProgressBar
        plugins.append(ProgressBar())
    seed_everything(cfg.seed)
    context = StrategyContext(encoders.texts, encoders.backbone.tokenizer, encoders.backbone.text_trunk,
                              reference=reference_pairs(cfg, encoders.images, encoders.texts),
                              encode_images=encoders.images)
    return ready.strategy_cls(classifier=ready.classifier, train=cfg.train, params=ready.params, context=context,
                              plugins=plugins, device=str(ready.device), eval_batch_size=cfg.eval.batch_size,
                              evaluator=training_curves(ready.logger) if distributed.is_main() else None,
                              task_loss=task_loss(cfg, ready.stream), session_lr=session_lrs(cfg, ready.stream))


def _resume_or_start(ready: Prepared, strategy: Any, rows: session.Rows, log: session.SessionLog) -> int:
    """The first row to evaluate. A continued run restores its last checkpoint (rows, model,
    strategy, diagnostics) and logs that row again, then goes on after it; a new run logs its
    config and plan, and starts at row 0 (the model before training)."""
    state = distributed.broadcast_object(checkpoint.load(ready.ckpt_dir) if ready.resumed and distributed.is_main()
                                         else None)
    if ready.resumed and state is None:
        raise UserError(f"run {ready.resumed} has no checkpoint in {ready.ckpt_dir}; run without --resume to start afresh")
    logger = ready.logger
    if state is None:
        ready.echo(f"MLflow run {logger.run_id} in {ready.uri}")
        logger.log_text(to_yaml(ready.cfg), "config.yaml")
        logger.log_text("\n".join(plan_lines(ready.stream, ready.control)) + "\n", "data_plan.txt")  # the data as built (real counts); --dry-run prints the whole plan
        return 0
    k = rows.restore(state)
    checkpoint.restore(ready.classifier.model, state)
    strategy.load_resume_state(state["strategy"])
    if ready.diagnostics is not None:
        ready.diagnostics.restore(state["extra"], k)
        ready.diagnostics.resume(k, ready.classifier.model, logger)
    if distributed.is_main():  # what a crash kept from the log (the logger skips points already logged)
        logger.hold_metrics(state.get("held_metrics", []))  # the session's training curves
        log.row(k)
    ready.echo(f"MLflow run {logger.run_id} in {ready.uri}: resuming after session {k} of {rows.n_sessions}")
    return k + 1


def _train(strategy: Any, stream: Any, i: int) -> dict[str, Any]:
    """Train session i (nothing for row 0); the row's record so far."""
    record: dict[str, Any] = {"session": i}
    if i > 0:
        experience = stream.benchmark.train_stream[i - 1]
        start, seen_before = time.perf_counter(), strategy.examples_seen
        strategy.train(experience, eval_streams=[])
        record["train_seconds"] = time.perf_counter() - start
        record["examples"] = strategy.examples_seen - seen_before
        record["examples_per_s"] = record["examples"] / max(record["train_seconds"], 1e-9)
    record["trainable_params"] = sum(p.numel() for p in strategy.model.parameters() if p.requires_grad)
    return record


def _evaluate(ready: Prepared, rows: session.Rows, record: dict[str, Any], i: int) -> None:
    """Row i: every session's test score and the control data's retrieval, into ``rows`` with
    ``record``; the row's diagnostics submitted."""
    from continual.run.evaluation import retrieval

    model, batch_size = ready.classifier.model, ready.cfg.eval.batch_size
    start = time.perf_counter()
    scores = evaluate_row(ready.classifier, ready.stream, ready.cfg, seen=i)  # looked up now: tests replace it
    control = retrieval(model, ready.control, batch_size) if ready.control is not None else None
    rows.add(i, scores, control, record)
    record["eval_seconds"] = time.perf_counter() - start
    if ready.diagnostics is not None:  # spatial disorder since row 0 and since the row before,
        # compared on a worker thread while the next session trains
        record["diagnostics_seconds"] = ready.diagnostics.submit(i, model, ready.logger)


def _checkpoint(ready: Prepared, strategy: Any, rows: session.Rows, i: int) -> None:
    """Rows 0..i, the trained parameters and the strategy's state, and the metrics held."""
    checkpoint.save(ready.ckpt_dir, i, ready.classifier.model, {
        **rows.state(i), "strategy": strategy.resume_state(), "run_id": ready.logger.run_id,
        "held_metrics": ready.logger.held_metrics()},  # the session's training curves, sent by log.row
        extra=ready.diagnostics.tensors() if ready.diagnostics is not None else None)


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
        if found.data.tags.get(N.FINGERPRINT_TAG) != fingerprint:
            raise UserError(f"--resume {resume}: that run was started with a different config; "
                            "give the same config and overrides, or drop --resume")
        return _claim(resume, uri, lock)
    if fresh:
        return None
    for candidate in find_runs(uri, cfg.tracking.experiment, N.FINGERPRINT_TAG, fingerprint):
        folder = Path(cfg.output_dir) / "checkpoints" / candidate.info.run_id
        if candidate.data.tags.get(N.PARENT_TAG) != parent:
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
    matrix (``names.MATRICES[stream.kind]``), as arrays over sessions; image-text streams add each
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
    for j, tested in enumerate(stream.sessions):
        classes = {"all": None, "session": tested.classes,
                   "seen": sorted(set(seen_classes) | set(tested.classes))}[cfg.eval.label_space]
        hits, items = class_counts(classifier, stream.benchmark.test_stream[j].dataset, classes, cfg.eval.batch_size)
        row[j] = 100.0 * hits.sum() / max(items.sum(), 1.0)
        correct, total = correct + hits, total + items
    with np.errstate(invalid="ignore", divide="ignore"):  # classes without test images: NaN
        return {"accuracy": row, "per_class": (100.0 * correct / total).tolist()}


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
