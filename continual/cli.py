"""The ``continual`` command.

Heavy imports (torch, avalanche, mlflow) happen inside the commands that need them, so
``continual --help`` answers at once. A user error (bad config, missing data, unreachable
tracking server) is printed as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Any, Optional, Sequence

from continual.errors import UserError, first_line

DEFAULT_CONFIG = "default"  # the shipped configs/default.yaml (continual.config.shipped)


def main(argv: Optional[Sequence[str]] = None) -> int:
    # avalanche imports qpsolvers, which warns about solvers none of our strategies use
    warnings.filterwarnings("ignore", message="no QP solver")
    parser = build_parser()
    # key=value overrides may come after flags (argparse stops the positional list at a flag)
    args, extra = parser.parse_known_args(argv)
    if extra:
        target = {"run": "overrides", "pretrain": "overrides", "compare": "configs", "sweep": "configs",
                  "tune": "overrides"}.get(
            getattr(args, "command", None))
        if target is None or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        setattr(args, target, list(getattr(args, target)) + extra)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        return args.handler(args) or 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM during a run (continual.system.signals)
        from continual.system.signals import exit_status

        print(str(exc) or "interrupted", file=sys.stderr)
        return exit_status(exc)
    except Exception as exc:  # a tracking server gone, a full disk: one line too
        from continual.run.faults import explain

        message = explain(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="continual", description="Continual-learning experiments for CLIP models, tracked in MLflow.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run an experiment from a YAML config",
                         description="Run an experiment: CONFIG, then dotted key=value overrides (omegaconf).")
    run.add_argument("config", nargs="?", default=DEFAULT_CONFIG,
                     help=f"YAML file or shipped config name (`continual list`; default {DEFAULT_CONFIG})")
    run.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4 stream.n_sessions=2")
    run.add_argument("--dry-run", action="store_true", help="validate the config and print the plan; train nothing")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--resume", metavar="RUN_ID", help="continue this run from its last checkpoint "
                     "(by default an unfinished run of the same config is continued)")
    run.add_argument("--fresh", action="store_true", help="start a new run even if an unfinished one exists")
    run.set_defaults(handler=cmd_run)

    swp = sub.add_parser("sweep", help="configs x override values x seeds as one MLflow parent run, with the comparison",
                         description="Run the grid of CONFIGs x comma-separated override values (key=a,b) x seeds as "
                                     "one MLflow parent run with every run nested under it; the parent holds each "
                                     "group's mean, std and n over seeds after every session, the comparison table "
                                     "(mean ± std, 95%% intervals, paired tests against --baseline) and figures. The "
                                     "same command again skips finished runs and resumes unfinished ones.")
    swp.add_argument("configs", nargs="+", help="YAML files or shipped config names, then key=value or key=a,b overrides")
    swp.add_argument("--seeds", help="seeds, e.g. 0-4 or 0,3,7 (default: each config's own seed)")
    swp.add_argument("--jobs", type=int, default=1, help="runs side by side on this machine (the cores divided between them)")
    swp.add_argument("--executor", default="local", help="local (default), slurm (submitit; a pre-empted run resumes) "
                     "or submitit-local (submitit's local executor)")
    swp.add_argument("--executor-option", action="append", default=[], metavar="KEY=VALUE",
                     help="submitit parameter, e.g. slurm_partition=gpu, timeout_min=120, gpus_per_node=1 (repeatable)")
    swp.add_argument("--baseline", help="the group the others are tested against (default: finetune, where the grid has it)")
    swp.add_argument("--metrics", help="table columns, comma-separated metric names (default: the stream's own)")
    swp.add_argument("--name", help="the parent run's name")
    swp.set_defaults(handler=cmd_sweep)

    tun = sub.add_parser("tune", help="choose a method's hyper-parameters on validation data (Optuna), then re-run them on fresh seeds",
                         description="A study of --trials trials, each an ordinary run nested under the study's MLflow run, "
                                     "trained on each session's training data minus a validation split (stream.val_fraction, "
                                     "default 0.2) and scored on that split: the test data is sealed (never encoded or "
                                     "scored) except under --protocol oracle. The pruner may stop a trial at a session "
                                     "boundary. The chosen values are re-run on --seeds as a sweep nested under the study "
                                     "(`continual report` compares them). The same command again resumes the study.")
    tun.add_argument("config", nargs="?", default=DEFAULT_CONFIG, help=f"YAML file or shipped config name (default {DEFAULT_CONFIG})")
    tun.add_argument("overrides", nargs="*", help="dotted overrides, e.g. stream.n_sessions=3")
    tun.add_argument("--trials", type=int, required=True, help="the budget: finished (complete or pruned) trials")
    tun.add_argument("--space", action="append", default=[], metavar="KEY=SPEC",
                     help="replace or add a dimension: log:LOW:HIGH, float:LOW:HIGH, int:LOW:HIGH, choice:A,B "
                          "(repeatable; default: train.lr, train.epochs and the strategy's Params.TUNABLE)")
    tun.add_argument("--objective", help="metric to optimise (default cl/avg_acc; image-text: r1/cl/avg_acc, the mean "
                     "of i2t and t2i); a,b: a Pareto front, the best first objective on it chosen")
    tun.add_argument("--protocol", default="first-k", choices=("first-k", "holdout-k", "full", "oracle"),
                     help="first-k (default): tune on the first k sessions' validation data, then freeze; holdout-k: "
                          "the first k sessions only tune, the re-runs report on the rest; full: validation after every "
                          "session; oracle: tuned on test data (labelled so everywhere)")
    tun.add_argument("--k", type=int, help="sessions of first-k/holdout-k (default 2 if the stream has >= 3 sessions, else 1)")
    tun.add_argument("--seeds", help="re-run seeds of the chosen values (default 0-4; 'none': no re-run)")
    tun.add_argument("--tuning-seeds", default="1000", help="seeds of the trials (default 1000; disjoint from --seeds)")
    tun.add_argument("--jobs", type=int, default=1, help="worker processes sharing the study (the cores divided between them)")
    tun.add_argument("--executor", default="local", help="local (default), slurm or submitit-local: workers through submitit")
    tun.add_argument("--executor-option", action="append", default=[], metavar="KEY=VALUE", help="submitit parameter (repeatable)")
    tun.add_argument("--storage", help="Optuna storage, any SQLAlchemy URL (default sqlite:///OUTPUT_DIR/optuna.db)")
    tun.add_argument("--study-name", help="the study's name in the storage (default: from the command's inputs)")
    tun.set_defaults(handler=cmd_tune)

    cmp_ = sub.add_parser("compare", help="a sweep with each config's own seed: several configs, one parent run, one table",
                          description="`continual sweep CONFIGS...` with each config's own seed.")
    cmp_.add_argument("configs", nargs="+", help="YAML files or shipped config names, then key=value overrides")
    cmp_.add_argument("--baseline", help="the group the others are tested against (default: finetune, where present)")
    cmp_.set_defaults(handler=cmd_sweep, seeds=None, jobs=1, executor="local", executor_option=[], metrics=None, name=None)

    rep_ = sub.add_parser("report", help="the comparison table of runs already in an MLflow store (no training)",
                          description="Group the finished runs of an experiment (or of a sweep's parent run) by config "
                                      "without the seed and print the comparison table: mean ± std over seeds, 95%% "
                                      "intervals, paired t-test and Wilcoxon against --baseline.")
    rep_.add_argument("target", help="an experiment name, or a sweep's parent run id")
    rep_.add_argument("--baseline", help="the group the others are tested against (default: finetune, where present)")
    rep_.add_argument("--format", choices=("md", "csv", "latex"), default="md")
    rep_.add_argument("--metrics", help="table columns, comma-separated metric names (default: the stream's own)")
    rep_.add_argument("--tracking-uri", help="the store (default: the sqlite store of --output-dir)")
    rep_.add_argument("--output-dir", default="outputs", help="the runs' output_dir (default: outputs)")
    rep_.set_defaults(handler=cmd_report)

    pre = sub.add_parser("pretrain", help="build a base model offline (contrastive training on image-caption pairs)")
    pre.add_argument("config", nargs="?", help="pretrain YAML (default: the built-in 'lit' recipe)")
    pre.add_argument("overrides", nargs="*", help="dotted overrides, e.g. epochs=10")
    pre.set_defaults(handler=cmd_pretrain)

    ui = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 on the default store")
    ui.add_argument("--output-dir", default="outputs", help="the runs' output_dir (default: outputs)")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(handler=cmd_ui)

    met = sub.add_parser("metrics", help="summary metrics of an accuracy matrix CSV",
                         description="Rows: after session i; columns: session j's test data. A T x T matrix has "
                                     "rows after sessions 1..T; a (T+1) x T matrix has the model before any "
                                     "training as its first row.")
    met.add_argument("matrix", help="CSV file")
    met.add_argument("--format", choices=("text", "json"), default="text")
    met.add_argument("--weights", help="comma-separated test-set sizes per session (for average incremental accuracy)")
    met.set_defaults(handler=cmd_metrics)

    ben = sub.add_parser("bench", help="throughput, memory and scaling, as ratios to a bare open_clip loop and to fine-tuning",
                         description="Measures, in one process: our training step against a bare open_clip loop, each "
                                     "method's step and peak memory against fine-tuning, the step's FLOP/s against one "
                                     "large matrix product, and a run's cost against its number of sessions.")
    ben.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    ben.add_argument("--models", default="tiny-vit,ViT-B-32", help="open_clip model names, comma-separated "
                     "(random init; default tiny-vit,ViT-B-32)")
    ben.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ben.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (default 1: stable ratios on a "
                     "shared machine; 0 = all cores)")
    ben.add_argument("--batch-size", type=int, help="per step (default: 32 for tiny-vit, 8 otherwise)")
    ben.add_argument("--steps", type=int, help="timed steps per session (default: 8 for tiny-vit, 3 otherwise)")
    ben.add_argument("--rounds", type=int, help="sessions per variant, interleaved (default: 2 for tiny-vit, 1 otherwise)")
    ben.add_argument("--profile", action="store_true", help="also show where fine-tuning's step time goes")
    ben.add_argument("--no-features", dest="features", action="store_false",
                     help="skip frozen-trunk feature extraction against a bare inference loop")
    ben.add_argument("--first-run", action="store_true", help="also time a first `continual run` on an empty cache "
                     "up to its first training step (minutes; an absolute time: use a quiet machine)")
    ben.add_argument("--sessions", default="2,5,10", help="session counts of the run-cost comparison, comma-separated "
                     "('' to skip; default 2,5,10)")
    ben.set_defaults(handler=cmd_bench)

    lst = sub.add_parser("list", help="the registered strategies, streams and control sets")
    lst.set_defaults(handler=cmd_list)
    return parser


def config_and_overrides(config: Optional[str], overrides: Sequence[str]) -> tuple[str, list[str]]:
    """``continual run key=value ...`` overrides the default config: a first argument that is an
    override is not a config."""
    if config is not None and "=" in config:
        return DEFAULT_CONFIG, [config, *overrides]
    return config or DEFAULT_CONFIG, list(overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from continual.config.load import load_config

    cfg = load_config(*config_and_overrides(args.config, args.overrides))
    from continual.run import loop

    loop.check_resume_flags(args.resume, args.fresh)

    if args.dry_run:
        print("\n".join(loop.plan(cfg)))
        print("config valid; nothing trained (--dry-run)")
        return 0
    from continual.system import distributed

    result = loop.run(cfg, progress=not args.no_progress, resume=args.resume, fresh=args.fresh)
    if distributed.is_main():  # under torchrun: one report, from rank 0
        print()
        print(final_report(result, cfg))
    distributed.finish()
    return 0


def final_report(result, cfg) -> str:
    from continual.measure.metrics import format_summary

    titles = {"accuracy": "Accuracy", "i2t_r1": "Image-to-text R@1", "t2i_r1": "Text-to-image R@1"}
    lines = []
    for name, R in (result.matrices or {"accuracy": result.accuracy}).items():
        lines += [f"{titles.get(name, name)} matrix (%): rows = after session i (0 = before training), "
                  "columns = session j's test data",
                  "        " + "".join(f"{f'S{j + 1}':>8}" for j in range(R.shape[1]))]
        lines += [f"{f'row {i}':<8}" + "".join(f"{v:8.1f}" for v in row) for i, row in enumerate(R)] + [""]
    from continual.tracking import names as N

    keys = {k: v for k, v in result.summary.items() if not k.startswith(N.DETAILS) or k in N.HEADLINE}
    lines += ["Summary after the last session:", format_summary(keys), ""]
    lines.append(f"MLflow run {result.run_id} in {result.tracking_uri}")
    if not cfg.tracking.uri:
        lines.append(f"Open the dashboard: continual ui --output-dir {cfg.output_dir}   (then the link it prints)")
    return "\n".join(lines)


def cmd_sweep(args: argparse.Namespace) -> int:
    from continual.compare.sweep import parse_seeds, sweep

    configs = [a for a in args.configs if "=" not in a]
    overrides = [a for a in args.configs if "=" in a]
    if not configs:
        configs = [DEFAULT_CONFIG]
    options = executor_options(args.executor_option)
    result = sweep(configs, overrides, parse_seeds(args.seeds) if args.seeds else None, jobs=args.jobs,
                   executor=args.executor, baseline=args.baseline, name=args.name,
                   metrics=args.metrics.split(",") if args.metrics else None, executor_options=options)
    print()
    print(result.table.markdown())
    print(f"MLflow run {result.parent_id} in {result.tracking_uri} (the sweep; its groups and runs are nested under it)")
    output_dir = result.tracking_uri.removeprefix("sqlite:///").rsplit("/", 1)[0]
    if result.tracking_uri.startswith("sqlite:///"):
        print(f"Open it: continual ui --output-dir {output_dir}, expand the sweep in the runs list, then the chart "
              "view draws one curve per group; the table and figures are the sweep's artifacts")
    return 0 if all(o.status == "FINISHED" for o in result.outcomes) else 1


def executor_options(items: Sequence[str]) -> dict[str, Any]:
    """``--executor-option KEY=VALUE`` items as submitit parameters (whole numbers as ints)."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--executor-option '{item}' is not KEY=VALUE (e.g. slurm_partition=gpu)")
        options[key] = int(value) if value.isdigit() else value
    return options


def cmd_tune(args: argparse.Namespace) -> int:
    from continual.compare.sweep import parse_seeds
    from continual.compare.tune import tune

    config, overrides = config_and_overrides(args.config, args.overrides)
    options = executor_options(args.executor_option)
    no_rerun = (args.seeds or "").strip().lower() == "none"
    result = tune(config, overrides, trials=args.trials, space=args.space, objective=args.objective,
                  protocol=args.protocol, k=args.k, seeds=None if no_rerun or not args.seeds else parse_seeds(args.seeds),
                  tuning_seeds=parse_seeds(args.tuning_seeds), jobs=args.jobs, executor=args.executor,
                  storage=args.storage, study_name=args.study_name, rerun=not no_rerun,
                  echo=lambda line: print(line, flush=True), executor_options=options)
    print()
    print(f"MLflow run {result.parent_id} in {result.tracking_uri} (the study; its trials are nested under it)")
    if result.rerun is not None:
        print(result.rerun.table.markdown())
        print(f"re-runs: sweep {result.rerun.parent_id} (`continual report {result.rerun.parent_id}`)")
        return 0 if all(o.status == "FINISHED" for o in result.rerun.outcomes) else 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from continual.compare.report import from_store
    from continual.tracking.store import default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri(args.output_dir)
    table = from_store(args.target, uri, args.baseline, args.metrics.split(",") if args.metrics else None)
    print(table.render(args.format), end="")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from continual.run.pretrain import base_path, load_pretrain_config, pretrain

    cfg = load_pretrain_config(args.config, args.overrides)
    report = pretrain(cfg)
    print(json.dumps(report, indent=2))
    print(f"saved {base_path(cfg)}  (use it with model.pretrained={base_path(cfg)})")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from continual.tracking.server import start_ui, ui_url
    from continual.tracking.store import default_artifact_root, default_tracking_uri

    uri = default_tracking_uri(args.output_dir)
    print(f"MLflow UI for {uri} (Ctrl-C to stop); in its model-training view:")
    for name, experiment_id in experiments(uri):
        print(f"  {name:<24} {ui_url(args.port, experiment_id)}")
    print(f"  {'(all experiments)':<24} {ui_url(args.port)}")
    return start_ui(uri, default_artifact_root(args.output_dir), args.port)


def experiments(uri: str) -> list[tuple[str, str]]:
    """(name, id) of the store's experiments with runs; none when the store does not exist yet."""
    from continual.tracking.store import sqlite_path

    db = sqlite_path(uri) if uri.startswith("sqlite:///") else None
    if db is None or not db.exists():
        return []
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    return [(e.name, e.experiment_id) for e in client.search_experiments()
            if client.search_runs([e.experiment_id], max_results=1)]


def cmd_metrics(args: argparse.Namespace) -> int:
    import numpy as np
    from continual.measure import metrics as M

    try:
        R = M.load_matrix_csv(args.matrix)
        initial = M.matrix_layout(R)
        weights = [float(w) for w in args.weights.split(",")] if args.weights else None
        summary = M.summarize(R, initial_row=initial, weights=weights)
    except (ValueError, OSError) as exc:
        raise UserError(first_line(exc)) from None
    summary["sessions"] = float(R.shape[1])
    summary["initial_row"] = float(initial)
    if args.format == "json":  # strict JSON: an undefined metric is null, never NaN or Infinity
        print(json.dumps({k: (float(v) if np.isfinite(v) else None) for k, v in summary.items()}, indent=2,
                         allow_nan=False))
    else:
        print(M.format_summary(summary))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from continual.bench.costs import bench

    def numbers(text: str) -> list[int]:
        try:
            return [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise UserError(f"--sessions: expected comma-separated integers, got '{text}'") from None

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    text = bench(models, device=args.device, precision=args.precision, sessions=numbers(args.sessions), threads=args.threads,
                 profile=args.profile, features=args.features, first_run=args.first_run,
                 echo=lambda line: print(line, file=sys.stderr, flush=True),
                 batch_size=args.batch_size, steps=args.steps, rounds=args.rounds)
    print(text)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from continual.config import shipped
    from continual.registry import CONTROLS, STRATEGIES, STREAMS

    for title, registry in (("strategies", STRATEGIES), ("streams", STREAMS), ("control sets", CONTROLS)):
        print(f"{title}:")
        for name, summary in registry.summaries().items():
            print(f"  {name:<18} {summary}")
    configs = shipped.names()
    for title, chosen in (("configs (continual run NAME)", [n for n in configs if not n.startswith("pretrain-")]),
                          ("base recipes (continual pretrain NAME)", [n for n in configs if n.startswith("pretrain-")])):
        print(f"{title}:")
        for name in chosen:
            print(f"  {name:<18} {shipped.summary(name)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
