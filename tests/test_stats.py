"""Statistics over seeds and the comparison table, against hand computations on known values."""

from __future__ import annotations

import csv
import io
import math

import pytest

from continual.measure import stats
from continual.compare.groups import RunRecord, group
from continual.compare.report import CLASS_INCREMENTAL, Table

# Student's t quantile t_{0.975, 2}, closed form for 2 degrees of freedom:
# t_{p,2} = (2p - 1) sqrt(2 / (4 p (1 - p)))
T975_DF2 = 0.95 * math.sqrt(2 / (4 * 0.975 * 0.025))


def test_summary_is_mean_sample_std_and_the_t_interval():
    s = stats.summarize([10.0, 12.0, 14.0])
    assert (s.n, s.mean, s.std) == (3, 12.0, 2.0)
    half = T975_DF2 * 2.0 / math.sqrt(3)
    assert (s.ci_low, s.ci_high) == (pytest.approx(12 - half, rel=1e-12), pytest.approx(12 + half, rel=1e-12))
    # NaN (a metric a run did not log) does not count; one value has no spread
    one = stats.summarize([5.0, float("nan")])
    assert one.n == 1 and one.mean == 5.0 and math.isnan(one.std) and math.isnan(one.ci_low)
    assert stats.summarize([]).n == 0


def test_paired_tests_by_hand():
    method = {0: 10.0, 1: 12.0, 2: 14.0, 7: 99.0}  # seed 7 has no baseline run: not a pair
    baseline = {0: 8.0, 1: 11.0, 2: 11.0}
    p = stats.paired(method, baseline)
    # differences 2, 1, 3: mean 2, std 1, t = 2 / (1 / sqrt 3) = sqrt 12 with 2 degrees of freedom,
    # whose CDF is 1/2 + t / (2 sqrt(2 + t^2)): p = 2 (1/2 - sqrt 12 / (2 sqrt 14))
    assert p.n == 3 and p.diff == pytest.approx(2.0, rel=1e-12)
    assert p.p_t == pytest.approx(1 - math.sqrt(12) / math.sqrt(14), rel=1e-9)
    half = T975_DF2 / math.sqrt(3)
    assert (p.ci_low, p.ci_high) == (pytest.approx(2 - half, rel=1e-12), pytest.approx(2 + half, rel=1e-12))
    # Wilcoxon, exact: all 3 differences positive; of the 2^3 equally likely sign patterns, one is
    # as extreme on each side: p = 2 / 8
    assert p.p_wilcoxon == pytest.approx(0.25, rel=1e-12)
    assert not p.significant()  # 0.074 > 0.05


def test_paired_edge_cases():
    same = stats.paired({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})
    assert same.diff == 0.0 and same.p_t == 1.0 and same.p_wilcoxon == 1.0
    shifted = stats.paired({0: 2.0, 1: 3.0, 2: 4.0}, {0: 1.0, 1: 2.0, 2: 3.0})  # no spread: certain
    assert shifted.p_t == 0.0 and shifted.significant()
    lone = stats.paired({0: 1.0}, {0: 0.0})
    assert lone.n == 1 and math.isnan(lone.p_t)


def runs(strategy: str, values: dict[int, dict[str, float]], status: str = "FINISHED", **params) -> list[RunRecord]:
    return [RunRecord(f"{strategy}-{seed}", f"{strategy}-s{seed}", status, seed,
                      {"strategy.name": strategy, "seed": str(seed), "stream.name": "digits", "stream.n_sessions": "2",
                       **params}, metrics) for seed, metrics in values.items()]


@pytest.fixture
def table() -> Table:
    fine = runs("finetune", {s: {"cl/forgetting": 90.0 + s, "retention/relative": 0.10 + 0.01 * s} for s in range(5)})
    # far less forgetting on every seed (significant); retention a hair above finetune's on some
    # seeds, below on others (not significant)
    zscl = runs("zscl", {s: {"cl/forgetting": 40.0 + 2 * s, "retention/relative": 0.11 + 0.01 * (-1) ** s}
                        for s in range(5)})
    # seed 4 crashed: 4 finished runs; retention the best on average, but not on every seed
    retention = {0: 0.12, 1: 0.105, 2: 0.14, 3: 0.125}
    lwf = runs("lwf", {s: {"cl/forgetting": 85.0 + s, "retention/relative": retention[s]} for s in range(4)})
    lwf += runs("lwf", {4: {}}, status="FAILED")
    columns = [c for c in CLASS_INCREMENTAL if c.metric in ("cl/forgetting", "retention/relative")]
    return Table(group(fine + zscl + lwf), columns, "finetune", title="digits")


def test_table_counts_seeds_honestly_and_tests_against_the_baseline(table):
    by_label = {g.label: g for g in table.groups}
    assert len(by_label["lwf"].runs) == 4 and len(by_label["lwf"].failed) == 1
    zscl = table.cells[by_label["zscl"].key, "cl/forgetting"]
    assert zscl.summary.mean == pytest.approx(44.0) and zscl.versus.diff == pytest.approx(-48.0)
    assert zscl.versus.significant()
    text = table.markdown()
    assert "| lwf | 4 (1 not finished) |" in text
    assert "| finetune | 5 | 92.0 ± 1.6 | 0.12 ± 0.02 |" in text


def test_the_best_is_marked_only_where_it_is_significantly_ahead(table):
    by_label = {g.label: g for g in table.groups}
    forgetting = table.cells[by_label["zscl"].key, "cl/forgetting"]
    assert forgetting.best and forgetting.marked  # lower is better, and far ahead of lwf on every seed
    retention = [table.cells[g.key, "retention/relative"] for g in table.groups]
    best = next(c for c in retention if c.best)
    assert best is table.cells[by_label["lwf"].key, "retention/relative"]
    assert not best.marked  # lwf and finetune are close: the ranking is not established
    md = table.markdown()
    assert "**44.0 ± 3.2**" in md and md.count("**") == 3 * 2  # the title, the one bold cell, the baseline


def test_csv_and_latex_carry_the_same_numbers(table):
    rows = list(csv.DictReader(io.StringIO(table.csv())))
    zscl = next(r for r in rows if r["group"] == "zscl" and r["metric"] == "cl/forgetting")
    assert float(zscl["mean"]) == pytest.approx(44.0) and zscl["best_significant"] == "1" and zscl["n"] == "5"
    assert float(zscl["p_paired_t"]) < 0.05 and zscl["baseline"] == "finetune"
    assert float(zscl["ci95_low"]) < 44.0 < float(zscl["ci95_high"])
    latex = table.latex()
    assert r"\textbf{44.0 $\pm$ 3.2}$^{*}$" in latex and r"\begin{tabular}" in latex


def test_diagnostics_are_described_not_ranked():
    """A rotation in degrees is not a score: the table names it with its unit, tests it against
    the baseline like any metric, and marks no best."""
    from continual.compare.report import column_for

    fine = runs("finetune", {s: {"diag/image/rotation_mean_deg": 50.0 + s} for s in range(5)})
    modx = runs("modx", {s: {"diag/image/rotation_mean_deg": 60.0 + s + 0.1 * (-1) ** s} for s in range(5)})
    column = column_for("diag/image/rotation_mean_deg")
    assert column.title == "image rotation since start (deg)" and column.higher_is_better is None
    t = Table(group(fine + modx), [column], "finetune")
    cells = [t.cells[g.key, column.metric] for g in t.groups]
    assert not any(c.best or c.marked for c in cells)
    assert next(c for c in cells if c.versus is not None).versus.significant()  # 10 degrees more on every seed
    assert "**" not in t.markdown().split("Against")[0] and "none is ranked" in t.markdown()
    assert column_for("diag/gap/centroid_distance").title == "diag/gap/centroid_distance"  # no "()"


def test_the_title_counts_the_runs_sessions_not_the_unused_key():
    """A multi-domain stream has one session per dataset, whatever stream.n_sessions says."""
    from dataclasses import replace

    from continual.compare.report import title_of

    domains = [replace(r, sessions=4) for r in runs("finetune", {0: {}, 1: {}}, **{"stream.n_sessions": "5"})]
    assert title_of(group(domains)).startswith("digits, 4 sessions: 1 group, seeds 0, 1")
    assert title_of(group(runs("finetune", {0: {}}))).startswith("digits, 2 sessions")  # older runs: the key


def test_holm_matches_the_step_down_definition_and_keeps_nans():
    from continual.measure.stats import holm

    # m = 4 finite p-values: sorted 0.01, 0.02, 0.03, 0.04 -> 4x, 3x, 2x, 1x with the running max
    assert holm([0.03, 0.01, math.nan, 0.04, 0.02]) == pytest.approx([0.06, 0.04, math.nan, 0.06, 0.06], nan_ok=True)
    assert holm([0.5, 0.9]) == [1.0, 1.0]  # capped at 1
    assert holm([0.001]) == [0.001]  # one test: nothing to correct
    # never below the raw p, and monotone in it
    raw = [0.2, 0.004, 0.03, 0.011, 0.5, 0.0007]
    adj = holm(raw)
    assert all(a >= p for a, p in zip(adj, raw))
    order = sorted(range(len(raw)), key=raw.__getitem__)
    assert all(adj[order[i]] <= adj[order[i + 1]] for i in range(len(raw) - 1))


def test_a_table_corrects_its_comparisons_with_holm():
    """Eight methods each ahead of the baseline by a little on every metric: some raw p-values pass
    0.05, but with 8 x 2 comparisons in the table, none does once adjusted (and none is starred)."""
    noise = [0.0, 1.3, -0.7, 2.1, -1.6]
    fine = runs("finetune", {s: {"cl/avg_acc": 50.0 + noise[s], "cl/forgetting": 40.0 + noise[s]} for s in range(5)})
    others = []
    for i in range(8):
        shift = [0.9, 0.5, 1.4, 0.2, 1.1]  # a small, noisy gain: raw p about 0.02
        others += runs(f"m{i}", {s: {"cl/avg_acc": 50.0 + noise[s] + shift[(s + i) % 5],
                                     "cl/forgetting": 40.0 + noise[s] - shift[(s + i) % 5]} for s in range(5)})
    columns = [c for c in CLASS_INCREMENTAL if c.metric in ("cl/avg_acc", "cl/forgetting")]
    t = Table(group(fine + others), columns, "finetune")
    cells = [cell for cell in t.cells.values() if cell.versus is not None]
    assert len(cells) == 16 and t.comparisons == 16
    assert all(c.versus.p_t < 0.05 for c in cells)  # every raw test passes ...
    assert not any(c.significant for c in cells)  # ... none survives the correction
    smallest = min(cells, key=lambda c: c.versus.p_t)
    assert smallest.p_holm == pytest.approx(16 * smallest.versus.p_t, rel=1e-12)
    assert all(c.p_holm >= c.versus.p_t for c in cells)
    md = t.markdown()
    assert "Holm-adjusted over the table's 16 comparisons" in md and ", adj. " in md
    assert not any("*" in line for line in md.splitlines() if line.startswith("| m"))


def test_bwt_is_shown_but_not_ranked_beside_forgetting():
    fine = runs("finetune", {s: {"cl/forgetting": 90.0 + s, "cl/bwt": -90.0 - s} for s in range(5)})
    zscl = runs("zscl", {s: {"cl/forgetting": 40.0 + 2 * s, "cl/bwt": -40.0 - 2 * s} for s in range(5)})
    columns = [c for c in CLASS_INCREMENTAL if c.metric in ("cl/forgetting", "cl/bwt")]
    t = Table(group(fine + zscl), columns, "finetune")
    bold = [c for c in t.cells.values() if c.marked]
    assert len(bold) == 1 and bold[0] is t.cells[next(g.key for g in t.groups if g.label == "zscl"), "cl/forgetting"]
    assert "BWT repeats forgetting and is not ranked" in t.markdown()


def test_each_row_meets_the_baseline_of_its_own_recipe_and_a_mismatch_is_marked():
    """A sweep of train.lr over fine-tuning and a method pairs each method group with fine-tuning at
    the same lr; a group whose recipe no baseline shares is compared with the closest and marked."""
    values = lambda base: {s: {"cl/forgetting": base + s} for s in range(3)}  # noqa: E731
    groups = group(runs("finetune", values(90), **{"train.lr": "0.001"}) + runs("finetune", values(80), **{"train.lr": "0.0001"})
                   + runs("vrlwf", values(70), **{"train.lr": "0.001"}) + runs("vrlwf", values(60), **{"train.lr": "0.0001"})
                   + runs("modx", values(50), **{"train.lr": "0.001", "train.label_smoothing": "0.0"}))
    columns = [c for c in CLASS_INCREMENTAL if c.metric == "cl/forgetting"]
    t = Table(groups, columns, "finetune")
    by_label = {g.label: g for g in t.groups}
    assert t.against[by_label["vrlwf train.lr=0.001"].key].label == "finetune train.lr=0.001"
    assert t.against[by_label["vrlwf train.lr=0.0001"].key].label == "finetune train.lr=0.0001"
    for lr in ("0.001", "0.0001"):  # every matched pair differs by 20 points on every seed
        assert t.cells[by_label[f"vrlwf train.lr={lr}"].key, "cl/forgetting"].versus.diff == pytest.approx(-20.0)
    modx = by_label["modx"]
    assert t.against[modx.key].label == "finetune train.lr=0.001"
    assert t.differs[modx.key] == ["train.label_smoothing=0.0 (baseline: -)"]
    md = t.markdown()
    assert "| modx † |" in md and "- modx: train.label_smoothing=0.0 (baseline: -)" in md
    assert "column baseline" in md and "| finetune train.lr=0.001 |" in md.split("Against")[1]
