"""``continual tune``: hyper-parameters chosen on validation data, then re-run on fresh seeds.

    continual tune lwf --trials 20 --protocol first-k --seeds 0-4

A study (Optuna, in RDB storage: ``OUTPUT_DIR/optuna.db`` by default, any SQLAlchemy URL with
``--storage``) proposes values from the method's search space (:mod:`continual.compare.space`);
each trial is an ordinary run (:func:`continual.run.loop.run`) nested under the study's MLflow
run, trained on each session's training data minus its validation split and scored on that
split (``stream.evaluate_on=validation``: the test data is sealed, never encoded or scored;
control evaluation is off). A trial reports its objective after every session and the pruner
(median) may stop it there. The chosen values are then re-run on fresh seeds (never a tuning
seed) as a sweep (:mod:`continual.compare.sweep`) nested under the study, so that
``continual report`` compares tuned methods with the usual statistics.

Protocols (``--protocol``; Lee et al. 2024, arXiv 2404.06466; Chaudhry et al. 2019):

- ``first-k`` (default): trials run the first k sessions only (k = 2 if the stream has >= 3
  sessions, else 1) on their validation data; the values are then frozen for the whole stream;
- ``holdout-k``: the same trials; the re-runs (the reported evaluation) run sessions k+1..T only;
- ``full``: trials run the whole stream, validation after every session;
- ``oracle``: trials run the whole stream scored on the *test* data. Only by name, and labelled
  "oracle (tuned on test data)" in its tags, run names and printed lines.

The same command again resumes the study: finished trials are kept, a trial whose worker died
(its heartbeat stopped) is marked FAILED and retried with the same values, and the budget counts
finished (complete or pruned) trials only, so nothing is counted twice.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from continual.compare import space as S
from continual.errors import ConfigError, UserError

Echo = Callable[[str], None]
PROTOCOLS = ("first-k", "holdout-k", "full", "oracle")
ORACLE_LABEL = "oracle (tuned on test data)"
DEFAULT_VAL_FRACTION = 0.2
DEFAULT_TUNING_SEEDS = (1000,)
DEFAULT_RERUN_SEEDS = (0, 1, 2, 3, 4)
ROLE = "tune"
TUNE_TAG = "tune_fingerprint"
TRIAL_ROLE = "trial"
HEARTBEAT_S, GRACE_S = 10, 30  # a worker silent for GRACE_S has died: its trial is failed and retried

# Metrics an objective can be, with their direction. Image-text streams log each under i2t/ and
# t2i/ (e.g. i2t/cl/avg_acc); "r1/..." is the mean of the two directions.
_MAX = ("cl/avg_acc", "cl/avg_inc_acc", "cl/bwt", "cl/fwt", "mtil/transfer", "mtil/avg", "mtil/last", "seen")
_MIN = ("cl/forgetting",)


def direction(metric: str, kind: str) -> str:
    """maximize | minimize for ``metric`` on a stream of ``kind``; a one-line error otherwise."""
    base, prefixes = metric, ("i2t/", "t2i/", "r1/") if kind == "pairs" else ("",)
    prefix = next((p for p in prefixes if p and metric.startswith(p)), "")
    base = metric[len(prefix):]
    if kind == "classification" and base == "acc/seen":
        base = "seen"
    if (kind == "pairs") == bool(prefix) and base in _MAX + _MIN:
        return "maximize" if base in _MAX else "minimize"
    known = [p + m for p in prefixes for m in ("cl/avg_acc", "cl/avg_inc_acc", "cl/forgetting", "cl/bwt", "mtil/last")]
    raise ConfigError(f"--objective: '{metric}' is not a metric a {kind} stream's run logs with a known direction; "
                      f"e.g. {', '.join(known)}")


def default_objective(kind: str) -> str:
    return "r1/cl/avg_acc" if kind == "pairs" else "cl/avg_acc"


def metric_value(metrics: dict, metric: str) -> float:
    if metric.startswith("r1/"):
        rest = metric[3:]
        values = [metrics.get(f"i2t/{rest}"), metrics.get(f"t2i/{rest}")]
        return float("nan") if None in values else (values[0] + values[1]) / 2
    if metric == "seen" or metric.endswith("/seen") and not metric.startswith(("i2t", "t2i")):
        metric = "acc/seen"
    return float(metrics.get(metric, float("nan")))


# -- the plan: everything checked before any trial trains ------------------------------------------
@dataclass
class Plan:
    config: str
    overrides: list[str]
    trials: int
    space: dict[str, S.Dim]
    objectives: list[str]
    directions: list[str]
    protocol: str
    k: int
    sessions: int
    tuning_seeds: list[int]
    rerun_seeds: list[int]
    trial_overrides: list[str]  # what makes a run a trial of this protocol
    rerun_overrides: list[str]
    storage: str
    study_name: str
    uri: str
    experiment: str
    output_dir: str
    strategy: str
    stream: str
    pruner_startup: int = 2
    fingerprint: str = ""
    label: str = ""

    @property
    def sealed(self) -> bool:
        return self.protocol != "oracle"


def prepare(config: str, overrides: Sequence[str], trials: int, space: Sequence[str] = (),
            objective: Optional[str] = None, protocol: str = "first-k", k: Optional[int] = None,
            seeds: Optional[Sequence[int]] = None, tuning_seeds: Optional[Sequence[int]] = None,
            storage: Optional[str] = None, study_name: Optional[str] = None,
            pruner_startup: Optional[int] = None) -> Plan:
    """Check every input (one-line errors) and plan the study; nothing trains."""
    from continual.config.load import load_config
    from continual.run.preflight import preflight, tracking_uri

    if trials < 1:
        raise ConfigError(f"--trials must be >= 1 (the budget of finished trials), got {trials}")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol: '{protocol}' is not one of {', '.join(PROTOCOLS)}")
    overrides = list(overrides)
    cfg = load_config(config, overrides)
    checked = preflight(cfg)
    strategy_cls = checked.strategy_cls
    if not getattr(strategy_cls, "trains", True):
        raise ConfigError(f"strategy '{cfg.strategy.name}' does not train: it has nothing to tune")
    T = len(checked.stream.sessions)
    if protocol in ("first-k", "holdout-k"):
        k = k if k is not None else (2 if T >= 3 else 1)
        limit = T - 1 if protocol == "holdout-k" else T
        if not 1 <= k <= limit:
            raise ConfigError(f"--k {k}: the stream has {T} sessions; {protocol} needs 1 <= k <= {limit}"
                              + (" (sessions must remain for the evaluation)" if protocol == "holdout-k" else ""))
    elif k is not None:
        raise ConfigError(f"--k applies to first-k and holdout-k, not --protocol {protocol}")
    else:
        k = T
    kind = checked.stream.kind
    objectives = [o.strip() for o in (objective or default_objective(kind)).split(",") if o.strip()]
    if not objectives or len(set(objectives)) != len(objectives):
        raise ConfigError(f"--objective: give one metric or distinct comma-separated metrics, got '{objective}'")
    directions = [direction(o, kind) for o in objectives]
    tuning_seeds = list(tuning_seeds or DEFAULT_TUNING_SEEDS)
    rerun_seeds = list(DEFAULT_RERUN_SEEDS if seeds is None else seeds)
    overlap = sorted(set(tuning_seeds) & set(rerun_seeds))
    if overlap:
        raise ConfigError(f"--seeds {','.join(map(str, rerun_seeds))} share seed(s) {overlap} with the tuning seeds "
                          f"{','.join(map(str, tuning_seeds))}: re-runs need fresh seeds (see --tuning-seeds)")
    dims = S.resolve(cfg, strategy_cls, space)
    if not dims:
        raise ConfigError(f"strategy '{cfg.strategy.name}' has no tunable parameters; give some with --space KEY=SPEC")
    val_fraction = float(cfg.stream.val_fraction) or DEFAULT_VAL_FRACTION
    trial_overrides = ["diagnostics.enabled=false"]
    if protocol == "oracle":
        trial_overrides += ["stream.evaluate_on=test"]
    else:
        trial_overrides += [f"stream.val_fraction={val_fraction}", "stream.evaluate_on=validation"]
    if protocol in ("first-k", "holdout-k"):
        trial_overrides.append(f"stream.last_session={k}")
    rerun_overrides = [f"stream.first_session={k + 1}"] if protocol == "holdout-k" else []
    S.check(dims, config, overrides + trial_overrides, strategy_cls)
    for extra in (trial_overrides, rerun_overrides):  # the protocol's own keys fit this stream
        preflight(load_config(config, overrides + extra))
    output_dir = str(cfg.output_dir)
    storage = storage or f"sqlite:///{Path(output_dir).resolve()}/optuna.db"
    if pruner_startup is None:
        pruner_startup = max(1, min(5, trials // 4))
    basis = json.dumps({"config": config, "overrides": overrides, "space": {k_: d.spec() for k_, d in dims.items()},
                        "objectives": objectives, "protocol": protocol, "k": k, "tuning_seeds": tuning_seeds,
                        "trial": trial_overrides}, sort_keys=True)
    fp = hashlib.blake2b(basis.encode(), digest_size=8).hexdigest()
    what = f"{cfg.strategy.name}-{cfg.stream.name}-{protocol}" + (f"{k}" if protocol.endswith("-k") else "")
    label = f"tune-{what}" + (f" {ORACLE_LABEL}" if protocol == "oracle" else "")
    return Plan(config, overrides, trials, dims, objectives, directions, protocol, k, T, tuning_seeds, rerun_seeds,
                trial_overrides, rerun_overrides, storage, study_name or f"{what}-{fp}", tracking_uri(cfg),
                str(cfg.tracking.experiment), output_dir, str(cfg.strategy.name), str(cfg.stream.name),
                pruner_startup, fp, label)


# -- the study -------------------------------------------------------------------------------------
def storage_of(url: str, heartbeat: Optional[int] = None, grace: Optional[int] = None) -> Any:
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    heartbeat, grace = heartbeat or HEARTBEAT_S, grace or GRACE_S

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return RDBStorage(url, heartbeat_interval=heartbeat, grace_period=grace,
                      heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
                      engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None)


def open_study(plan: Plan, worker: int = 0, storage: Any = None) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=plan.pruner_startup, n_warmup_steps=0)
              if len(plan.objectives) == 1 else optuna.pruners.NopPruner())  # Optuna prunes single objectives only
    return optuna.create_study(storage=storage or storage_of(plan.storage), study_name=plan.study_name,
                               directions=plan.directions, load_if_exists=True, pruner=pruner,
                               sampler=optuna.samplers.TPESampler(seed=plan.tuning_seeds[0] + worker))


def finished(study: Any) -> list:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


class Objective:
    """One trial: the suggested values as overrides, a run per tuning seed, nested under the
    study's MLflow run; reports after every session (the pruner may stop it there)."""

    def __init__(self, plan: Plan, parent: str, echo: Echo = print) -> None:
        self.plan, self.parent, self.echo = plan, parent, echo

    def __call__(self, trial: Any) -> Any:
        import optuna

        from continual.config.load import load_config
        from continual.run.loop import run
        from continual.tracking.study_runs import StudyRuns

        plan = self.plan
        values = {key: dim.suggest(trial) for key, dim in plan.space.items()}
        results, train_seconds = [], 0.0
        runs = StudyRuns(plan.uri)
        oracle = f" {ORACLE_LABEL}" if plan.protocol == "oracle" else ""
        for s, seed in enumerate(plan.tuning_seeds):
            name = f"{plan.strategy} trial {trial.number}{oracle}" + (f" seed {seed}" if len(plan.tuning_seeds) > 1 else "")
            cfg = load_config(plan.config, [*plan.overrides, *plan.trial_overrides, *S.overrides_of(values),
                                            f"seed={seed}", f"tracking.run_name={name}"])
            seen: dict[str, Any] = {"seconds": 0.0}

            def on_row(i: int, metrics: dict, run_id: str, seed_index: int = s) -> None:
                if i == 0:
                    seen["run_id"] = run_id
                    trial.set_user_attr(f"mlflow_run_id_{seed_index}", run_id)
                    runs.mark_trial(run_id, trial.number, plan.protocol if not oracle else ORACLE_LABEL, plan.sealed,
                                    TRIAL_ROLE)
                    return
                seen["seconds"] += float(metrics.get("session/train_seconds", 0.0))
                trial.set_user_attr("train_seconds", train_seconds + seen["seconds"])
                if len(plan.objectives) == 1 and seed_index == 0:
                    value = metric_value(metrics, plan.objectives[0])
                    if math.isfinite(value):
                        trial.report(value, i)
                        if i < plan.k and trial.should_prune():
                            trial.set_user_attr("pruned_after_session", i)
                            raise optuna.TrialPruned(f"trial {trial.number} pruned after session {i}")

            try:
                result = run(cfg, echo=lambda line: None, progress=False, fresh=True, parent=self.parent, on_row=on_row)
            except optuna.TrialPruned:
                if "run_id" in seen:
                    runs.mark_pruned(seen["run_id"])
                    self._drop_checkpoints(seen["run_id"])
                self.echo(f"trial {trial.number}{oracle}: pruned after session {trial.user_attrs.get('pruned_after_session')} "
                          f"({', '.join(S.overrides_of(values))})")
                raise
            train_seconds += seen["seconds"]
            self._drop_checkpoints(result.run_id)
            results.append([metric_value(result.summary, o) for o in plan.objectives])
        trial.set_user_attr("train_seconds", train_seconds)
        means = [sum(r[j] for r in results) / len(results) for j in range(len(plan.objectives))]
        self.echo(f"trial {trial.number}{oracle}: {', '.join(f'{o} {v:.2f}' for o, v in zip(plan.objectives, means))} "
                  f"({', '.join(S.overrides_of(values))})")
        return means[0] if len(means) == 1 else tuple(means)

    def _drop_checkpoints(self, run_id: str) -> None:
        """A trial is never resumed (a retry starts afresh): its checkpoints only take space."""
        shutil.rmtree(Path(self.plan.output_dir) / "checkpoints" / run_id, ignore_errors=True)


def work(plan: Plan, parent: str, n_trials: int, worker: int = 0, threads: int = 0, echo: Optional[Echo] = None) -> int:
    """A worker: up to ``n_trials`` trials of the shared study, in this process. Returns how many
    it ran."""
    from continual.compare.sweep import set_threads

    set_threads(threads)
    echo = echo or (lambda line: print(f"[worker {worker}] {line}", flush=True))
    study = open_study(plan, worker)
    before = len(study.get_trials(deepcopy=False))
    study.optimize(Objective(plan, parent, echo), n_trials=n_trials, catch=(Exception,), gc_after_trial=True)
    return len(study.get_trials(deepcopy=False)) - before


class Work:
    """:func:`work` as a picklable callable (worker processes, submitit jobs)."""

    def __call__(self, *args: Any, **kwargs: Any) -> int:
        return work(*args, **kwargs)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def run_workers(plan: Plan, parent: str, remaining: int, jobs: int, executor: str, echo: Echo,
                executor_options: Optional[dict] = None) -> None:
    shares = [remaining // jobs + (i < remaining % jobs) for i in range(jobs)]
    shares = [s for s in shares if s > 0]
    if executor in ("slurm", "submitit-local"):
        import submitit

        ex = submitit.AutoExecutor(folder=str(Path(plan.output_dir) / "tune" / plan.study_name),
                                   cluster="local" if executor == "submitit-local" else "slurm")
        ex.update_parameters(**(executor_options or {}))
        jobs_ = [ex.submit(Work(), plan, parent, n, i) for i, n in enumerate(shares)]
        for job in jobs_:
            try:
                job.result()
            except Exception as exc:  # a dead job: its trial is failed (heartbeat) and retried by the next round
                echo(f"a worker job died: {str(exc).splitlines()[-1] if str(exc) else exc}")
        return
    if len(shares) <= 1:
        work(plan, parent, remaining, 0, 0, echo)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from continual.compare.sweep import threads_per_worker

    threads = threads_per_worker(len(shares))
    pool = ProcessPoolExecutor(max_workers=len(shares), mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = [pool.submit(Work(), plan, parent, n, i, threads) for i, n in enumerate(shares)]
        for f in futures:
            f.result()
    except BaseException:
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()


# -- the whole command -----------------------------------------------------------------------------
@dataclass
class TuneResult:
    study_name: str
    storage: str
    parent_id: str
    tracking_uri: str
    chosen: dict[str, Any]
    values: list[float]
    budget: dict[str, Any]
    rerun: Any = None  # SweepResult
    lines: list[str] = field(default_factory=list)


def tune(config: str, overrides: Sequence[str] = (), trials: int = 20, space: Sequence[str] = (),
         objective: Optional[str] = None, protocol: str = "first-k", k: Optional[int] = None,
         seeds: Optional[Sequence[int]] = None, tuning_seeds: Optional[Sequence[int]] = None, jobs: int = 1,
         executor: str = "local", storage: Optional[str] = None, study_name: Optional[str] = None,
         rerun: bool = True, echo: Echo = print, executor_options: Optional[dict] = None,
         pruner_startup: Optional[int] = None) -> TuneResult:
    """Plan (every check first), run the study to ``trials`` finished trials (resuming it), log
    it to MLflow and re-run the chosen values on ``seeds`` as a sweep nested under it."""
    from continual.compare.sweep import EXECUTORS
    from continual.tracking.store import ensure_store

    if executor not in EXECUTORS:
        raise ConfigError(f"--executor: '{executor}' is not one of {', '.join(EXECUTORS)}")
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    plan = prepare(config, overrides, trials, space, objective, protocol, k, seeds, tuning_seeds, storage,
                   study_name, pruner_startup)
    ensure_store(plan.uri)
    parent = _parent_run(plan)
    oracle = f" — {ORACLE_LABEL}" if plan.protocol == "oracle" else ""
    echo(f"tune: study '{plan.study_name}' in {plan.storage}, MLflow run {parent.run_id}; protocol {plan.protocol}"
         + (f" k={plan.k}" if plan.protocol.endswith("-k") else "") + f"{oracle}; objective {', '.join(plan.objectives)}; "
         f"{plan.trials} trials over " + ", ".join(f"{d.key}={d.spec()}" for d in plan.space.values()))
    study = open_study(plan)
    _close_dead_trial_runs(study, plan.uri)
    started = time.perf_counter()
    try:
        stalled = 0
        while (remaining := plan.trials - len(finished(study))) > 0 and stalled < 2:
            before = len(finished(study))
            run_workers(plan, parent.run_id, remaining, jobs, executor, echo, executor_options)
            stalled = stalled + 1 if len(finished(study)) == before else 0
    except BaseException as exc:
        parent.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED", error=f"{type(exc).__name__}: {exc}")
        raise
    done = finished(study)
    if not any(t.state.name == "COMPLETE" for t in done):
        parent.finish("FAILED", error="no trial finished")
        raise UserError(f"study '{plan.study_name}': no trial finished ({len(study.trials)} tried; see the trials' "
                        f"runs under MLflow run {parent.run_id}); nothing to choose")
    best = _chosen(study, plan)
    budget = _budget(study, plan, time.perf_counter() - started)
    lines = [f"chosen{oracle}: " + ", ".join(S.overrides_of(best.params)) + " ("
             + ", ".join(f"{o} {v:.2f}" for o, v in zip(plan.objectives, best.values)) + " on "
             + ("test data" if plan.protocol == "oracle" else "validation data") + ")",
             f"budget: {budget['trials']} trials ({budget['complete']} complete, {budget['pruned']} pruned, "
             f"{budget['failed']} failed and retried), {budget['train_seconds']:.0f} s of training"]
    for line in lines:
        echo(line)
    _log_study(parent, study, plan, best, budget)
    parent.finish("FINISHED")
    result = TuneResult(plan.study_name, plan.storage, parent.run_id, plan.uri, dict(best.params), list(best.values),
                        budget, lines=lines)
    if rerun:
        result.rerun = rerun_chosen(plan, best.params, parent.run_id, jobs, executor, echo, executor_options)
    return result


def rerun_chosen(plan: Plan, params: dict, parent_id: str, jobs: int, executor: str, echo: Echo,
                 executor_options: Optional[dict] = None) -> Any:
    """The chosen values on the re-run seeds, as a sweep nested under the study's run."""
    from continual.compare.sweep import sweep
    from continual.tracking.study_runs import StudyRuns

    tag = f" {ORACLE_LABEL}" if plan.protocol == "oracle" else ""
    name = f"tuned {plan.strategy} ({plan.protocol}{tag}) seeds {','.join(map(str, plan.rerun_seeds))}"
    echo(f"re-running the chosen values on seeds {', '.join(map(str, plan.rerun_seeds))} (never a tuning seed)")
    result = sweep([plan.config], [*plan.overrides, *plan.rerun_overrides, *S.overrides_of(params)], plan.rerun_seeds,
                   jobs=jobs, executor=executor, name=name, echo=echo, executor_options=executor_options)
    StudyRuns(plan.uri).nest_reruns(result.parent_id, parent_id)
    return result


def _chosen(study: Any, plan: Plan) -> Any:
    """The best trial; with several objectives, the Pareto front's best on the first objective."""
    if len(plan.objectives) == 1:
        return study.best_trial
    front = study.best_trials
    sign = 1 if plan.directions[0] == "maximize" else -1
    return max(front, key=lambda t: sign * t.values[0])


def _budget(study: Any, plan: Plan, seconds: float) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    count = lambda state: sum(t.state.name == state for t in trials)  # noqa: E731
    return {"trials": count("COMPLETE") + count("PRUNED"), "complete": count("COMPLETE"), "pruned": count("PRUNED"),
            "failed": count("FAIL"), "train_seconds": sum(float(t.user_attrs.get("train_seconds", 0.0)) for t in trials),
            "wall_seconds_this_call": seconds}


def _close_dead_trial_runs(study: Any, uri: str) -> None:
    """The MLflow runs of trials whose worker died (FAILED in the study) are marked FAILED too."""
    from continual.tracking.study_runs import StudyRuns, run_ids

    runs = StudyRuns(uri)
    for t in study.get_trials(deepcopy=False):
        if t.state.name != "FAIL":
            continue
        for run_id in run_ids(t.user_attrs):
            try:
                runs.fail_if_running(run_id, "its worker died; the trial was retried")
            except Exception:  # a run the store no longer has: nothing to close
                pass


def _parent_run(plan: Plan) -> Any:
    from continual.compare.groups import ROLE_TAG
    from continual.config.load import load_config
    from continual.tracking.logger import MLflowLogger
    from continual.tracking.store import default_artifact_root, find_runs

    existing = find_runs(plan.uri, plan.experiment, TUNE_TAG, plan.fingerprint)
    tracking_set = bool(load_config(plan.config, plan.overrides).tracking.uri)
    tags = {ROLE_TAG: ROLE, TUNE_TAG: plan.fingerprint, "strategy": plan.strategy, "stream": plan.stream,
            "tune_protocol": plan.protocol if plan.protocol != "oracle" else ORACLE_LABEL,
            "tune_objective": ",".join(f"{o} ({d})" for o, d in zip(plan.objectives, plan.directions)),
            "tune_budget": f"{plan.trials} trials", "tune_k": str(plan.k), "test_sealed": str(plan.sealed).lower(),
            "optuna_study": plan.study_name, "optuna_storage": _safe_url(plan.storage)}
    return MLflowLogger(plan.uri, plan.experiment, run_name=plan.label,
                        run_id=existing[0].info.run_id if existing else None, tags=tags,
                        params={"tune": {"config": plan.config, "overrides": plan.overrides, "trials": plan.trials,
                                         "protocol": plan.protocol, "k": plan.k, "objective": plan.objectives,
                                         "space": {k: d.spec() for k, d in plan.space.items()},
                                         "tuning_seeds": plan.tuning_seeds, "rerun_seeds": plan.rerun_seeds,
                                         "trial_overrides": plan.trial_overrides}},
                        artifact_location=None if tracking_set else default_artifact_root(plan.output_dir))


def _safe_url(url: str) -> str:
    """The storage URL without a password."""
    import re

    return re.sub(r"://([^:/@]+):[^@]+@", r"://\1:***@", url)


def trials_table(study: Any, plan: Plan) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {"trial": t.number, "state": t.state.name}
        for j, o in enumerate(plan.objectives):
            row[o] = t.values[j] if t.values else (t.intermediate_values[max(t.intermediate_values)]
                                                    if t.intermediate_values and j == 0 else "")
        row.update({k: t.params.get(k, "") for k in plan.space})
        row["pruned_after_session"] = t.user_attrs.get("pruned_after_session", "")
        row["train_seconds"] = round(float(t.user_attrs.get("train_seconds", 0.0)), 2)
        row["retry_of"] = t.system_attrs.get("failed_trial", "")
        row["mlflow_run_id"] = t.user_attrs.get("mlflow_run_id_0", "")
        rows.append(row)
    return rows


def _markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    return "\n".join(["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
                     + ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]) + "\n"


def _draw_study(study: Any, plan: Plan, folder: str) -> list[str]:
    """The study's figures (continual.figures.tuning) from its trials: the first objective of
    the complete ones, a pruned trial's last report, and fANOVA importances once two trials are
    complete."""
    import optuna

    from continual.figures import tuning as figures

    points = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name == "COMPLETE" and t.values:
            points.append(figures.TrialPoint(t.number, t.values[0], False, dict(t.params)))
        elif t.state.name == "PRUNED" and t.intermediate_values:
            points.append(figures.TrialPoint(t.number, t.intermediate_values[max(t.intermediate_values)], True,
                                             dict(t.params)))
    importances: dict[str, float] = {}
    if sum(not p.pruned for p in points) >= 2 and plan.space:
        try:
            importances = optuna.importance.get_param_importances(
                study, target=(lambda t: t.values[0]) if len(plan.objectives) > 1 else None)
        except Exception:  # e.g. every trial scored the same: nothing to apportion
            importances = {}
    where = "oracle (tuned on test data)" if plan.protocol == "oracle" else "validation data"
    space = {k: (d.kind, d.choices) for k, d in plan.space.items()}
    return figures.save_all(points, importances, space, plan.objectives[0], plan.directions[0] == "maximize",
                            f"{plan.strategy}: {plan.objectives[0]} ({where})", folder)


def _log_study(parent: Any, study: Any, plan: Plan, best: Any, budget: dict) -> None:
    """The parent's chosen values (params), budget (metrics), trials table and figures."""
    import csv
    import io

    from continual.tracking.study_runs import StudyRuns

    where = "oracle: tuned on TEST data" if plan.protocol == "oracle" else "validation data, test sealed"
    chosen = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
    parent.set_description(
        f"Chosen: {chosen} ({', '.join(f'{o} {v:.1f}' for o, v in zip(plan.objectives, best.values))} on {where}; "
        f"{plan.protocol}, k = {plan.k}). Budget: {budget['trials']} trials ({budget['pruned']} pruned), "
        f"{budget['train_seconds']:.0f} s of training. The figures and trials.md are under Artifacts; the "
        "chosen values re-run on fresh seeds are the nested sweep.")
    metrics = {f"tune/{k}": v for k, v in budget.items()}
    metrics.update({f"tune/best/{o}": v for o, v in zip(plan.objectives, best.values)})
    rows = trials_table(study, plan)
    with tempfile.TemporaryDirectory() as tmp:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        Path(tmp, "trials.csv").write_text(buffer.getvalue())
        Path(tmp, "trials.md").write_text(_markdown(rows))
        Path(tmp, "chosen.json").write_text(json.dumps({"params": best.params, "values": best.values, "budget": budget,
                                                        "protocol": plan.protocol, "objectives": plan.objectives,
                                                        "test_sealed": plan.sealed}, indent=2))
        try:
            _draw_study(study, plan, tmp)
        except Exception as exc:  # figures are a bonus: the table and the values are logged regardless
            Path(tmp, "figures_error.txt").write_text(f"{type(exc).__name__}: {exc}\n")
        StudyRuns(plan.uri).log_outcome(parent.run_id, best.params, metrics,
                                        f"{budget['trials']} trials ({budget['pruned']} pruned), "
                                        f"{budget['train_seconds']:.0f} s training", tmp)
