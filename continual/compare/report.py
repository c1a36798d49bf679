"""The comparison table of a set of runs: each group's final metrics over seeds (mean ± std, n,
the 95% interval of the mean) and, against a baseline group, the paired differences by seed with
the paired t-test and the Wilcoxon signed-rank test. Written as Markdown, CSV or LaTeX.

The best value of a column is marked (bold) only where it is significantly better than the
runner-up (paired t-test over their shared seeds, p < 0.05): a mark means the ranking holds.

``continual report`` builds it from runs already in a store; ``continual sweep`` builds the same
table from the same code after its runs finish.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Optional, Sequence

from continual.measure import stats
from continual.errors import UserError
from continual.compare import groups as G
from continual.compare.groups import Group
from continual.tracking import names as N


@dataclass(frozen=True)
class Column:
    metric: str
    header: str
    unit: str  # "%", "pts" (percentage points), "x" (a ratio), "deg" (degrees), "share", or ""
    higher_is_better: Optional[bool]  # None: a description, not a score (no best is marked)

    @property
    def title(self) -> str:
        return f"{self.header} ({self.unit})" if self.unit else self.header

    @property
    def bounds(self) -> tuple[float, float]:
        """The values the metric can take (a mean's interval beyond them is marked)."""
        return UNIT_BOUNDS.get(self.unit, (-math.inf, math.inf))


UNIT_BOUNDS = {"%": (0.0, 100.0), "pts": (-100.0, 100.0), "x": (0.0, math.inf), "deg": (0.0, 180.0),
               "share": (0.0, 1.0)}
# BWT is forgetting's other face (both drop from earlier accuracies): it is shown, never ranked twice
REPEATS = {N.cl("bwt"): N.cl("forgetting")}


CLASS_INCREMENTAL = [
    Column(N.cl("avg_acc"), "final avg acc", "%", True),
    Column(N.cl("avg_inc_acc"), "avg inc acc", "%", True),
    Column(N.cl("forgetting"), "forgetting", "pts", False),
    Column(N.cl("bwt"), "BWT", "pts", True),
    Column(N.CONTROL_R1_MEAN, "control R@1", "%", True),
    Column(N.RETENTION_RELATIVE, "retention", "x", True),
]
MULTI_DOMAIN = [
    Column(N.mtil("transfer"), "Transfer", "%", True),
    Column(N.mtil("avg"), "Avg", "%", True),
    Column(N.mtil("last"), "Last", "%", True),
    Column(N.cl("forgetting"), "forgetting", "pts", False),
    Column(N.RETENTION_RELATIVE, "retention", "x", True),
]
IMAGE_TEXT = [
    Column(N.cl("avg_acc", N.I2T), "i2t R@1, last row", "%", True),
    Column(N.cl("forgetting", N.I2T), "i2t forgetting", "pts", False),
    Column(N.cl("avg_acc", N.T2I), "t2i R@1, last row", "%", True),
    Column(N.cl("forgetting", N.T2I), "t2i forgetting", "pts", False),
    Column(N.RETENTION_RELATIVE, "control retention", "x", True),
]

# The spatial-disorder diagnostics (continual.measure.disorder): how the representation changed, which
# no column ranks (less rotation is the Mod-X paper's hypothesis of less forgetting, not a score).
DIAGNOSTICS = [
    Column(N.diag("image/rotation_mean_deg"), "image rotation since start", "deg", None),
    Column(N.diag("text/rotation_mean_deg"), "text rotation since start", "deg", None),
    Column(N.diag("pairs/deviation_deg"), "deviation since start", "deg", None),
    Column(N.diag_step("image/rotation_mean_deg"), "image rotation in the last session", "deg", None),
    Column(N.diag_step("text/rotation_mean_deg"), "text rotation in the last session", "deg", None),
    Column(N.diag_step("pairs/deviation_deg"), "deviation in the last session", "deg", None),
    Column(N.diag("image/rigid_fraction"), "image change that is a rotation", "share", None),
    Column(N.diag("text/rigid_fraction"), "text change that is a rotation", "share", None),
]


def default_columns(groups: Sequence[Group]) -> list[Column]:
    """The columns that describe the runs' kind of stream (image-text, multi-domain or
    class-incremental), keeping those some run logged."""
    logged = {k for g in groups for r in g.runs for k in r.final}
    streams = {r.params.get("stream.name") for g in groups for r in g.runs}
    chosen = IMAGE_TEXT if N.cl("forgetting", N.I2T) in logged else MULTI_DOMAIN if "mtil" in streams else CLASS_INCREMENTAL
    return [c for c in chosen if c.metric in logged]


def column_for(metric: str) -> Column:
    """A column for any metric: a known one, else named by the metric (lower is better for
    forgetting, performance drop and divergence-like names)."""
    for c in CLASS_INCREMENTAL + MULTI_DOMAIN + IMAGE_TEXT + DIAGNOSTICS:
        if c.metric == metric:
            return c
    if metric.startswith(N.DIAG):
        return Column(metric, metric, "", None)
    lower = any(w in metric for w in ("forgetting", "pd", "median_rank", "rotation", "deviation", "gap", "residual"))
    return Column(metric, metric, "", not lower)


@dataclass
class Cell:
    summary: stats.Summary
    versus: Optional[stats.Paired]  # against the row's baseline (None for a baseline itself)
    best: bool = False  # the column's best mean
    marked: bool = False  # ... and significantly better than the runner-up (Holm-adjusted p)
    p_holm: float = math.nan  # versus's t-test p, Holm-adjusted over every comparison of the table

    @property
    def significant(self) -> bool:
        """Different from the baseline, with the table's comparisons corrected (Holm)."""
        return self.p_holm < stats.ALPHA


class Table:
    """Groups x columns of :class:`Cell`, each group against ``baseline`` (a group label or a
    strategy). Where a sweep varies a key of the recipe (train.lr=1e-3,1e-4), the baseline is
    several groups and each row is paired with the one of its own recipe; a row that differs
    from its baseline in more than the method is compared all the same, and marked with the keys
    that differ. Every p-value against the baseline is Holm-adjusted over the whole table, and
    so are the best-versus-runner-up tests that decide the bold."""

    def __init__(self, groups: Sequence[Group], columns: Sequence[Column], baseline: Optional[str] = "finetune",
                 title: str = "") -> None:
        self.groups = [g for g in groups if g.runs or g.failed]
        if not any(g.runs for g in self.groups):
            raise UserError("no finished runs to report; run them first (continual run / continual sweep)")
        self.columns = list(columns)
        self.title = title
        self.baselines = G.baselines(self.groups, baseline) if baseline else []
        self.baseline = self.baselines[0] if len(self.baselines) == 1 else None
        self.against = {g.key: G.matched_baseline(g, self.baselines) for g in self.groups
                        if self.baselines and g not in self.baselines}
        self.differs = {key: G.recipe_differences(next(g for g in self.groups if g.key == key), base)
                        for key, base in self.against.items()}
        self.cells: dict[tuple[str, str], Cell] = {}
        for c in self.columns:
            for g in self.groups:
                base = self.against.get(g.key)
                versus = stats.paired(g.values(c.metric), base.values(c.metric)) if base is not None else None
                self.cells[g.key, c.metric] = Cell(g.summary(c.metric), versus)
        compared = [cell for cell in self.cells.values() if cell.versus is not None]
        for cell, p in zip(compared, stats.holm([cell.versus.p_t for cell in compared])):
            cell.p_holm = p
        self.comparisons = sum(math.isfinite(cell.p_holm) for cell in compared)
        self._mark_best()

    def ranked(self, c: Column) -> bool:
        """Whether a column's best is marked: a score, and not one that repeats another column."""
        metrics = {col.metric for col in self.columns}
        return c.higher_is_better is not None and REPEATS.get(c.metric) not in metrics

    def _mark_best(self) -> None:
        contests = []  # (best cell, its paired test against the runner-up, better in the right direction)
        for c in self.columns:
            ranked = sorted((g for g in self.groups if self.cells[g.key, c.metric].summary.n),
                            key=lambda g: self.cells[g.key, c.metric].summary.mean, reverse=bool(c.higher_is_better))
            if not ranked or not self.ranked(c):
                continue
            best = self.cells[ranked[0].key, c.metric]
            best.best = True
            if len(ranked) > 1:
                runner_up = stats.paired(ranked[0].values(c.metric), ranked[1].values(c.metric))
                contests.append((best, runner_up, runner_up.diff > 0 if c.higher_is_better else runner_up.diff < 0))
        for (best, _, better), p in zip(contests, stats.holm([t.p_t for _, t, _ in contests])):
            best.marked = better and p < stats.ALPHA

    # -- rendering -----------------------------------------------------------------------------------
    def n_text(self, g: Group) -> str:
        return f"{len(g.runs)}" + (f" ({len(g.failed)} not finished)" if g.failed else "")

    def markdown(self) -> str:
        lines = []
        if self.title:
            lines += [f"**{self.title}**", ""]
        head = ["method", "seeds"] + [c.title for c in self.columns]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        beyond = False
        for g in self.groups:
            cells = [self.row_label(g), self.n_text(g)]
            for c in self.columns:
                cell = self.cells[g.key, c.metric]
                text = _mean_std(cell.summary, c)
                if _spread_beyond(cell.summary, c):
                    text, beyond = text + " ‡", True
                cells.append(f"**{text}**" if cell.marked else text)
            lines.append("| " + " | ".join(cells) + " |")
        ranked = any(self.ranked(c) for c in self.columns)
        repeated = [c.header for c in self.columns if c.higher_is_better is not None and not self.ranked(c)]
        lines += ["", "Mean ± std over seeds (sample standard deviation, n - 1); the 95% interval of each mean is in "
                  "the CSV. " + ("Bold: the best of the column and significantly better than the runner-up (paired "
                                 "t-test over their shared seeds, Holm-adjusted over the columns, p < 0.05); no bold: "
                                 "the ranking is not established." if ranked else
                                 "These columns describe the change; none is a score, so none is ranked.")
                  + (f" {', '.join(repeated)} repeats forgetting and is not ranked." if repeated else "")]
        if beyond:
            lines += ["", "‡ mean ± std reaches beyond the metric's range: the spread is not symmetric there; "
                      "every seed's value lies in the range."]
        if self.baselines:
            lines += ["", self._versus_header(), ""]
            head = ["method", "pairs"] + (["baseline"] if self.baseline is None else []) + [c.title for c in self.columns]
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for g in self.groups:
                if g.key not in self.against:
                    continue
                versus = [self.cells[g.key, c.metric] for c in self.columns]
                pairs = max((v.versus.n for v in versus), default=0)
                own = [self.against[g.key].label] if self.baseline is None else []
                lines.append("| " + " | ".join([self.row_label(g), str(pairs)] + own + [
                    _difference(v, c) for v, c in zip(versus, self.columns)]) + " |")
            lines += self._recipe_notes()
            smallest = 2.0 / 2 ** max((len(g.runs) for g in self.groups), default=0)
            if smallest >= stats.ALPHA:
                lines += ["", f"(With {max(len(g.runs) for g in self.groups)} seeds the Wilcoxon test's smallest "
                          f"possible p is {smallest:.3f}: it cannot reach 0.05; the t-test can.)"]
        return "\n".join(lines) + "\n"

    def _versus_header(self) -> str:
        against = (f"Against **{self.baseline.label}**" if self.baseline is not None else
                   "Against the baseline group of the same recipe (column baseline)")
        return (f"{against}, paired by seed: mean difference [95% interval]; p of the paired t-test, raw and "
                f"Holm-adjusted over the table's {self.comparisons} comparisons (* where the adjusted p < 0.05) / p of "
                "the Wilcoxon signed-rank test:")

    def row_label(self, g: Group) -> str:
        """The group's label, with † where it differs from its baseline in more than the method."""
        return g.label + (" †" if self.differs.get(g.key) else "")

    def _recipe_notes(self) -> list[str]:
        notes = [f"- {g.label}: {', '.join(self.differs[g.key])}" for g in self.groups if self.differs.get(g.key)]
        if not notes:
            return []
        return ["", "† differs from its baseline in more than the method, so its difference is not the method's "
                "alone (run the baseline with the same keys to compare it):", *notes]

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["group", "strategy", "metric", "unit", "n", "not_finished", "mean", "std", "ci95_low",
                         "ci95_high", "best", "best_significant", "baseline", "pairs", "diff", "diff_ci95_low",
                         "diff_ci95_high", "p_paired_t", "p_wilcoxon", "p_paired_t_holm", "differs_from_baseline",
                         "ci95_beyond_range"])
        for g in self.groups:
            base = self.against.get(g.key)
            for c in self.columns:
                cell = self.cells[g.key, c.metric]
                s, v = cell.summary, cell.versus
                low, high = c.bounds
                writer.writerow([g.label, g.strategy, c.metric, c.unit, s.n, len(g.failed), s.mean, s.std, s.ci_low,
                                 s.ci_high, int(cell.best), int(cell.marked), base.label if base else "", *(
                                     (v.n, v.diff, v.ci_low, v.ci_high, v.p_t, v.p_wilcoxon, cell.p_holm)
                                     if v else ("",) * 7),
                                 "; ".join(self.differs.get(g.key, [])),
                                 int(s.ci_low < low or s.ci_high > high)])
        return out.getvalue()

    def latex(self) -> str:
        spec = "l" + "r" * (len(self.columns) + 1)
        lines = [r"\begin{tabular}{" + spec + "}", r"\toprule",
                 " & ".join(["method", "seeds"] + [_latex(c.title) for c in self.columns]) + r" \\", r"\midrule"]
        for g in self.groups:
            cells = [_latex(self.row_label(g)), str(len(g.runs))]
            for c in self.columns:
                cell = self.cells[g.key, c.metric]
                text = _mean_std(cell.summary, c).replace("±", r"$\pm$")
                star = "^{*}" if cell.significant else ""
                text = (r"\textbf{" + text + "}" if cell.marked else text) + (f"${star}$" if star else "")
                cells.append(text)
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        note = ("% mean $\\pm$ std over seeds; bold: best and significantly better than the runner-up (paired t-test, "
                "Holm-adjusted, p<0.05)")
        if self.baselines:
            note += (f"; $^*$: differs from {_latex(self.baselines[0].label if self.baseline else 'its baseline')} "
                     f"(paired t-test, Holm-adjusted over {self.comparisons} comparisons, p<0.05)")
        if self.differs and any(self.differs.values()):
            note += "; \\dag: differs from its baseline in more than the method"
        return "\n".join(lines + [note]) + "\n"

    def render(self, fmt: str) -> str:
        return {"md": self.markdown, "csv": self.csv, "latex": self.latex}[fmt]()


def _digits(c: Column) -> int:
    return 2 if c.unit in ("x", "share") else 1


def _mean_std(s: stats.Summary, c: Column) -> str:
    if s.n == 0:
        return "-"
    d = _digits(c)
    return f"{s.mean:.{d}f}" + (f" ± {s.std:.{d}f}" if math.isfinite(s.std) else "")


def _p(p: float) -> str:
    return "-" if not math.isfinite(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


def _spread_beyond(s: stats.Summary, c: Column) -> bool:
    low, high = c.bounds
    return s.n > 1 and math.isfinite(s.std) and (s.mean - s.std < low or s.mean + s.std > high)


def _difference(cell: Cell, c: Column) -> str:
    v = cell.versus
    if v is None or v.n == 0:
        return "-"
    d = _digits(c)
    text = f"{v.diff:+.{d}f}"
    if math.isfinite(v.ci_low):
        text += f" [{v.ci_low:+.{d}f}, {v.ci_high:+.{d}f}]"
    return text + f"; p {_p(v.p_t)}, adj. {_p(cell.p_holm)}{'*' if cell.significant else ''} / {_p(v.p_wilcoxon)}"


def _latex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(a, b)
    return text


def columns_from(names: Optional[Sequence[str]], groups: Sequence[Group]) -> list[Column]:
    """``--metrics`` names as columns, or the default columns of the runs' stream."""
    return [column_for(n) for n in names] if names else default_columns(groups)


def headline(table: Table) -> str:
    """One line for the sweep's description: per column, the best group and whether it is
    significantly ahead."""
    parts = []
    for c in table.columns:
        best = next((g for g in table.groups if table.cells[g.key, c.metric].best), None)
        if best is None:
            continue
        cell = table.cells[best.key, c.metric]
        unit = c.unit if c.unit in ("%", "") else f" {c.unit}"
        parts.append(f"{c.header}: {best.label} {_mean_std(cell.summary, c)}{unit}"
                     + ("" if cell.marked else " (not significantly ahead)"))
    return "; ".join(parts)


def title_of(groups: Sequence[Group]) -> str:
    """What the runs are: the stream, its sessions, the number of groups and the seeds."""
    runs = [r for g in groups for r in g.runs + g.failed]
    # the run's own count (multi-domain and few-shot streams do not read stream.n_sessions)
    streams = sorted({f"{r.params.get('stream.name', '?')}, {r.sessions or r.params.get('stream.n_sessions', '?')} sessions"
                      for r in runs})
    seeds = sorted({r.seed for r in runs})
    return f"{'; '.join(streams)}: {len(groups)} group{'' if len(groups) == 1 else 's'}, seeds {', '.join(map(str, seeds))}"


def from_store(target: str, tracking_uri: str, baseline: Optional[str] = None,
               metrics: Optional[Sequence[str]] = None) -> Table:
    """The table of runs already in a store: those nested under a sweep's parent run (``target``
    a run id), or every seed run of an experiment (``target`` its name), grouped by config
    without the seed. ``baseline`` None: finetune where the runs have it."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from continual.compare import groups as G

    client = MlflowClient(tracking_uri)
    within = None
    experiment = client.get_experiment_by_name(target)
    if experiment is None:
        try:
            parent = client.get_run(target)
        except MlflowException:
            names = ", ".join(e.name for e in client.search_experiments())
            raise UserError(f"'{target}' is neither an experiment nor a run in {tracking_uri}; the experiments are: "
                            f"{names or '(none)'}") from None
        experiment_ids = [parent.info.experiment_id]
        nested = client.search_runs(experiment_ids, filter_string=f"tags.`{N.PARENT_TAG}` = '{target}'")
        within = {target} | {r.info.run_id for r in nested}
    else:
        experiment_ids = [experiment.experiment_id]
    found = G.group(G.seed_runs(client, experiment_ids, within))
    if baseline is None:  # finetune, where the runs have it
        baseline = "finetune" if any(g.strategy == "finetune" for g in found) else None
    return Table(found, columns_from(metrics, found), baseline, title=title_of(found))
