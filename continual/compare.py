"""Comparing methods: several experiment configs, one MLflow experiment, one table.

Every config is run with the same overrides (typically the same seed, stream and tracking
experiment), one after another, and the summaries are gathered into a Markdown table.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from continual.config import load_config

COLUMNS = [
    ("avg acc", "cl/avg_acc", "{:.1f}"),
    ("avg inc acc", "cl/avg_inc_acc", "{:.1f}"),
    ("forgetting", "cl/forgetting", "{:.1f}"),
    ("BWT", "cl/bwt", "{:.1f}"),
    ("control R@1", "control/r1_mean", "{:.1f}"),
    ("retention", "retention/relative", "{:.2f}"),
]


def compare(configs: Sequence[str], overrides: Sequence[str] = (), echo: Callable[[str], None] = print,
            progress: bool = False) -> list[tuple[str, object, object]]:
    """Run each config with ``overrides``; returns (config path, config, RunResult) triples.

    All configs are validated before the first one runs, so a typo in the last one costs nothing.
    """
    from continual.runner import run

    loaded = [(path, load_config(path, list(overrides))) for path in configs]
    results = []
    for path, cfg in loaded:
        echo(f"=== {path}: strategy {cfg.strategy.name} ===")
        results.append((path, cfg, run(cfg, echo=echo, progress=progress)))
    return results


def table(results: Sequence[tuple[str, object, object]]) -> str:
    """Markdown table: one row per run, the summary metrics after the last session."""
    head = ["method", "config", "base"] + [c[0] for c in COLUMNS] + ["trainable params", "train s", "total s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for path, cfg, result in results:
        s = result.summary
        cells = [str(cfg.strategy.name), f"`{path}`", f"{cfg.model.name} ({cfg.model.pretrained or 'random init'})"]
        cells += [_fmt(s.get(key), spec) for _, key, spec in COLUMNS]
        params = int(result.sessions[-1]["trainable_params"])
        total = s["total/train_seconds"] + s["total/eval_seconds"]
        cells += [f"{params:,}", f"{s['total/train_seconds']:.1f}", f"{total:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else spec.format(value)
