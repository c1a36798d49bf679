"""``continual sweep``: a grid of configs x override values x seeds as one MLflow parent run.

    continual sweep default vrlwf modx --seeds 0-4 train.lr=1e-3,1e-4

Every config, every combination of the comma-separated override values and every seed is one
child: an ordinary ``continual run`` (checkpointed, resumable). In MLflow the sweep is a parent
run; under it, one run per group (a config and override values: the seeds of one method) holds
the group's mean, std and n over seeds of every summary metric after every session, and under
each group its seed runs. So MLflow's charts, with the sweep expanded, draw one curve per group,
and each group expands to its seeds. The parent holds the comparison table (Markdown, CSV,
LaTeX: :mod:`continual.compare.report`) and the figures.

The same command again skips finished children and resumes unfinished ones (from their last
checkpoint, in the same MLflow run); a failing child fails alone (its run FAILED) and the table
counts the seeds each group has. Children run here one after another, side by side in worker
processes (``--jobs N``: the cores divided between them, a worker's children in one process so
imports are paid once), or as SLURM jobs through submitit (``--executor slurm``), whose
preemption hook requeues a child that then resumes from its checkpoint.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from omegaconf import DictConfig

from continual.compare import groups as G
from continual.config.load import load_config, to_dict
from continual.errors import ConfigError
from continual.tracking.params import as_params
from continual.system.signals import sigterm_as_interrupt

if TYPE_CHECKING:
    from continual.tracking.sweep_runs import SweepRuns

Echo = Callable[[str], None]
EXECUTORS = ("local", "slurm", "submitit-local")


# -- the grid ------------------------------------------------------------------------------------
def split_values(value: str) -> list[str]:
    """The comma-separated values of an override, commas inside brackets or quotes kept:
    ``1e-3,1e-4`` -> two values; ``[1,2],[3]`` -> two lists; ``[1,2]`` -> one."""
    values, depth, quote, current = [], 0, "", ""
    for ch in value:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            values.append(current)
            current = ""
            continue
        current += ch
    return values + [current]


def parse_seeds(text: str) -> list[int]:
    """``0-4`` -> [0, 1, 2, 3, 4]; ``0,3,7`` -> [0, 3, 7]; ranges and lists may mix."""
    seeds: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m or (m.group(2) and int(m.group(2)) < int(m.group(1))):
            raise ConfigError(f"--seeds: '{part}' is not a seed or a range like 0-4")
        seeds += range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: give distinct seeds, e.g. 0-4, got '{text}'")
    return seeds


@dataclass
class Child:
    """One run of the grid: a config with its overrides (the seed last)."""

    config: str
    overrides: list[str]
    cfg: DictConfig = field(repr=False)

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)

    @property
    def group_key(self) -> str:
        return G.group_key(as_params(to_dict(self.cfg)))

    def name(self) -> str:
        return " ".join([self.config, *self.overrides])


def grid(configs: Sequence[str], overrides: Sequence[str], seeds: Optional[Sequence[int]]) -> list[Child]:
    """Every config x every combination of override values x every seed, loaded and validated
    (a bad config anywhere fails here, before anything trains). ``seeds`` None: each config's own."""
    fixed, axes = [], []
    for item in overrides:
        key, _, value = item.partition("=")
        values = split_values(value)
        if len(values) > 1:
            axes.append([f"{key}={v}" for v in values])
        else:
            fixed.append(item)
    children = []
    for config in configs:
        for combo in itertools.product(*axes):
            for seed in (seeds if seeds is not None else [None]):
                extra = [*fixed, *combo] + ([f"seed={seed}"] if seed is not None else [])
                children.append(Child(config, extra, load_config(config, extra)))
    return children


def fingerprint(children: Sequence[Child]) -> str:
    from continual.run.loop import config_fingerprint

    prints = sorted(config_fingerprint(c.cfg) for c in children)
    return hashlib.blake2b(json.dumps(prints).encode(), digest_size=10).hexdigest()


# -- running one child (in this process, a worker process or a SLURM job) --------------------------
def threads_per_worker(workers: int) -> int:
    """Each of ``workers`` processes' share of this machine's cores (at least one)."""
    return max(1, (os.cpu_count() or 1) // workers)


def set_threads(threads: int) -> None:
    """A worker's share of the cores (torch's intra-op threads)."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)


@dataclass
class Outcome:
    name: str
    status: str  # FINISHED | FAILED
    run_id: Optional[str] = None
    error: str = ""


class RunChild:
    """Runs one child; picklable, so that worker processes and SLURM jobs can call it. As a
    submitit ``Checkpointable`` (duck-typed: ``checkpoint`` returns the same call), a pre-empted
    SLURM job is requeued and the child resumes from its last checkpoint."""

    def __call__(self, config: str, overrides: list[str], parent: str, threads: int = 0) -> Outcome:
        from continual.run.loop import run

        set_threads(threads)
        name = " ".join([config, *overrides])
        try:
            cfg = load_config(config, overrides)
            result = run(cfg, echo=lambda line: print(f"[{name}] {line}", flush=True), progress=False, parent=parent)
            return Outcome(name, "FINISHED", result.run_id)
        except Exception as exc:  # a failing child fails alone: its run is marked FAILED by the runner
            return Outcome(name, "FAILED", error=f"{type(exc).__name__}: {exc}".splitlines()[0])

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def execute(todo: list[tuple[Child, str]], jobs: int, executor: str, folder: Path, echo: Echo,
            executor_options: Optional[dict] = None) -> list[Outcome]:
    """Run the children (each with the group run it nests under): here, in ``jobs`` worker
    processes, or through submitit."""
    task = RunChild()
    if executor in ("slurm", "submitit-local"):
        import submitit

        ex = submitit.AutoExecutor(folder=str(folder), cluster="local" if executor == "submitit-local" else "slurm")
        ex.update_parameters(**(executor_options or {}))
        with ex.batch():
            pending = [ex.submit(task, c.config, c.overrides, parent) for c, parent in todo]
        outcomes = []
        for (child, _), job in zip(todo, pending):
            try:
                outcomes.append(job.result())
            except Exception as exc:  # the job itself died (killed, out of memory)
                outcomes.append(Outcome(child.name(), "FAILED", error=str(exc).splitlines()[-1] if str(exc) else "job died"))
            echo(f"{outcomes[-1].status.lower()}: {child.name()}")
        return outcomes
    if jobs <= 1:
        outcomes = []
        for child, parent in todo:
            outcomes.append(task(child.config, child.overrides, parent))
            echo(f"{outcomes[-1].status.lower()}: {child.name()}" + (f" ({outcomes[-1].error})" if outcomes[-1].error else ""))
        return outcomes
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = threads_per_worker(jobs)
    context = multiprocessing.get_context("spawn")  # no forked torch or sqlite state
    outcomes_by_index: dict[int, Outcome] = {}
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context)
    try:
        futures = {pool.submit(task, c.config, c.overrides, parent, threads): i for i, (c, parent) in enumerate(todo)}
        for future in as_completed(futures):
            i = futures[future]
            outcome = future.result()
            outcomes_by_index[i] = outcome
            echo(f"{outcome.status.lower()}: {todo[i][0].name()}" + (f" ({outcome.error})" if outcome.error else ""))
    except BaseException:  # interrupted: the workers' runs end KILLED (SIGTERM), resumable
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return [outcomes_by_index[i] for i in range(len(todo))]


# -- the sweep ------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    parent_id: str
    tracking_uri: str
    table: Any  # continual.compare.report.Table
    outcomes: list[Outcome]


@sigterm_as_interrupt
def sweep(configs: Sequence[str], overrides: Sequence[str] = (), seeds: Optional[Sequence[int]] = None,
          jobs: int = 1, executor: str = "local", baseline: Optional[str] = None, name: Optional[str] = None,
          metrics: Optional[Sequence[str]] = None, echo: Echo = print,
          executor_options: Optional[dict] = None) -> SweepResult:
    """Run the grid (skipping finished children, resuming unfinished ones) and log the answer to
    the parent run; returns it with the comparison table. ``baseline``: the group the others are
    tested against (None: finetune, where the grid has it)."""
    from continual.compare import report
    from continual.run.preflight import preflight, tracking_uri
    from continual.tracking.store import ensure_store
    from continual.tracking.sweep_runs import SweepRuns

    if executor not in EXECUTORS:
        raise ConfigError(f"--executor: '{executor}' is not one of {', '.join(EXECUTORS)}")
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    children = grid(configs, overrides, seeds)
    for child in children:  # everything a real run would refuse, for every child, before any trains
        preflight(child.cfg)
    uri = _one(children, tracking_uri, "tracking stores", "tracking.uri / output_dir")
    experiment = _one(children, lambda c: c.tracking.experiment, "experiments", "tracking.experiment")
    output_dir = _one(children, lambda c: c.output_dir, "output folders", "output_dir")
    ensure_store(uri)  # made once, before the workers open it together
    runs = SweepRuns(uri)

    baseline = _baseline(children, baseline)
    parent = _parent_run(runs, experiment, children, name, output_dir, configs, overrides, seeds)
    echo(f"sweep: {len(children)} runs in MLflow run {parent.run_id} ({uri}, experiment '{experiment}')")
    group_runs = _group_runs(runs, parent, children)
    todo = []
    for child in children:
        state = _state(runs, parent.experiment_id, child, group_runs[child.group_key], output_dir)
        if state == "to run":
            todo.append((child, group_runs[child.group_key]))
        else:
            echo(f"{state}: {child.name()}")
    try:
        outcomes = execute(todo, jobs, executor, Path(output_dir) / "sweeps" / parent.run_id, echo, executor_options)
    except BaseException as exc:  # Ctrl-C, SIGTERM: the children ended KILLED and resumable; so is the sweep
        parent.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED", error=f"{type(exc).__name__}: {exc}")
        raise

    found = G.group(G.seed_runs(runs.client, [parent.experiment_id], within=set(group_runs.values())))
    table = report.Table(found, report.columns_from(metrics, found), baseline, title=report.title_of(found))
    _log_answer(runs, parent, found, group_runs, table)
    failed = sum(o.status != "FINISHED" for o in outcomes)
    parent.set_description(f"{len(found)} groups x {len(seeds or [0])} seeds"
                           + (f", {failed} runs failed" if failed else "") + ": " + report.headline(table))
    parent.finish("FINISHED")
    return SweepResult(parent.run_id, uri, table, outcomes)


def _state(runs: SweepRuns, experiment_id: str, child: Child, group_id: str, output_dir: str) -> str:
    """``to run`` (or to resume), ``finished already``, or ``running elsewhere`` (another process
    holds one of its runs). A run of it that died before its first checkpoint can never be
    resumed: it is deleted, so that every child ends with one run."""
    from continual.run.checkpoint import STATE_FILE
    from continual.system.locks import FileLock
    from continual.run.loop import config_fingerprint

    found = runs.seed_runs(experiment_id, config_fingerprint(child.cfg), group_id)
    if any(r.info.status == "FINISHED" for r in found):
        return "finished already"
    checkpoints = Path(output_dir) / "checkpoints"
    for r in found:
        lock = FileLock(checkpoints / f"{r.info.run_id}.lock")
        if not lock.acquire(blocking=False):
            return "running elsewhere"
        try:
            if not (checkpoints / r.info.run_id / STATE_FILE).exists():
                runs.delete(r.info.run_id)
        finally:
            lock.release()
    return "to run"


def _one(children: Sequence[Child], key: Callable[[DictConfig], Any], what: str, fix: str) -> Any:
    values = {str(key(c.cfg)) for c in children}
    if len(values) != 1:
        raise ConfigError(f"the configs of a sweep must share one of {what}, got {', '.join(sorted(values))}; "
                          f"give {fix}=... for all")
    return next(iter(values))


def _labelled_groups(children: Sequence[Child]) -> tuple[list[G.Group], dict[str, Child]]:
    """The grid's groups, labelled as the report will label them, each with one of its children."""
    representatives: dict[str, Child] = {}
    for c in children:
        representatives.setdefault(c.group_key, c)
    records = [G.RunRecord("", "", "FINISHED", c.seed, as_params(to_dict(c.cfg)), {}) for c in representatives.values()]
    return G.group(records), representatives


def _baseline(children: Sequence[Child], baseline: Optional[str]) -> Optional[str]:
    """The baseline's name, checked before anything trains: one the user named must name a group
    of the grid (or a strategy: then each group is paired with that strategy's group of its own
    recipe); without one, finetune where the grid has it."""
    labelled, _ = _labelled_groups(children)
    if baseline is not None:
        G.baselines(labelled, baseline)  # a one-line error naming the groups
        return baseline
    return "finetune" if any(g.strategy == "finetune" for g in labelled) else None


def _parent_run(runs: SweepRuns, experiment: str, children: Sequence[Child], name: Optional[str], output_dir: str,
                configs: Sequence[str], overrides: Sequence[str], seeds: Optional[Sequence[int]]) -> Any:
    """The sweep's parent run: the one this grid made before (same children), or a new one."""
    from continual.tracking.store import default_artifact_root

    strategies = list(dict.fromkeys(c.cfg.strategy.name for c in children))
    label = name or f"sweep-{children[0].cfg.stream.name}-{'-'.join(strategies)[:60]}-x{len({c.seed for c in children})}"
    tracking_set = bool(children[0].cfg.tracking.uri)
    return runs.open_parent(experiment, label, fingerprint(children),
                            params={"sweep": {"configs": list(configs), "overrides": list(overrides),
                                              "seeds": list(seeds) if seeds is not None else "each config's own"}},
                            artifact_location=None if tracking_set else default_artifact_root(output_dir))


def _group_runs(runs: SweepRuns, parent: Any, children: Sequence[Child]) -> dict[str, str]:
    """One run per group under the parent (made now, so that children nest under it from the
    start): group key -> run id."""
    existing = runs.group_runs(parent)
    labelled, representatives = _labelled_groups(children)
    out = {}
    for g in labelled:
        if g.key in existing:
            out[g.key] = existing[g.key]
            continue
        cfg = representatives[g.key].cfg
        params = {k: v for k, v in as_params(to_dict(cfg)).items() if k != "seed"}
        out[g.key] = runs.open_group(parent, g.key, g.label, cfg.strategy.name, cfg.stream.name, params)
    return out


def _log_answer(runs: SweepRuns, parent: Any, found: list[G.Group], group_runs: dict[str, str], table: Any) -> None:
    """Group runs: mean, std and n of every summary metric after every session, and their mean
    matrices; the parent: the table and the figures."""
    from continual.figures import matrices as figures

    aggregates, matrices = {}, {}
    for g in found:
        run_id = group_runs.get(g.key)
        if run_id is None or not g.runs:
            continue
        aggregates[g.key] = G.session_aggregates(runs.client, g)
        runs.log_group(run_id, aggregates[g.key], len(g.runs))
        matrices[g.key] = G.mean_matrices(runs.client, g)
        with runs.artifacts(run_id) as tmp:
            for m in matrices[g.key]:
                figures.heatmap(m.mean, m.rows, m.columns, f"{g.label}: mean over {m.n} seeds", std=m.std).savefig(
                    f"{tmp}/{m.name}_mean_heatmap.png", dpi=120)
        runs.finish_group(run_id)
    with runs.artifacts(parent.run_id) as tmp:
        for fmt, suffix in (("md", "md"), ("csv", "csv"), ("latex", "tex")):
            Path(tmp, f"comparison.{suffix}").write_text(table.render(fmt))
        labelled = [(g.label, aggregates[g.key]) for g in found if g.key in aggregates]
        for c in table.columns:
            if any(c.metric in a for _, a in labelled):
                fig = figures.bands(labelled, c.metric, c.title)
                fig.savefig(f"{tmp}/{c.metric.replace('/', '_')}_by_session.png", dpi=120)
        fig = figures.matrix_grid([(g.label, matrices[g.key][0]) for g in found if matrices.get(g.key)])
        if fig is not None:
            fig.savefig(f"{tmp}/mean_matrices.png", dpi=110)
