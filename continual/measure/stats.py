"""Statistics of a metric over seeds: mean, spread, a confidence interval, and paired tests.

Runs of two methods with the same seed share the class order, the sampled examples and the
initialisation (the seed fixes all of them), so a comparison between methods is paired by seed:
the paired t-test on the per-seed differences, and the Wilcoxon signed-rank test, which does not
assume the differences are normal. With n pairs the smallest two-sided Wilcoxon p-value is
2 / 2^n (0.0625 for 5 seeds): it cannot reach 0.05 below 6 seeds, which the report says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats as sps

ALPHA = 0.05  # significance level of the tests and 1 - the confidence of the intervals


@dataclass(frozen=True)
class Summary:
    """A metric over n seeds: mean, sample standard deviation (n - 1), and the 95% interval of
    the mean (Student's t with n - 1 degrees of freedom); std and interval are NaN for n < 2."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Paired:
    """A method against a baseline over the seeds both have: the mean of the per-seed
    differences (method - baseline) with its 95% interval, and two-sided p-values of the paired
    t-test and of the Wilcoxon signed-rank test (NaN when fewer than 2 pairs)."""

    n: int
    diff: float
    ci_low: float
    ci_high: float
    p_t: float
    p_wilcoxon: float

    def significant(self, alpha: float = ALPHA) -> bool:
        """The paired t-test rejects equal means at ``alpha``."""
        return self.p_t < alpha


def t_interval(values: Sequence[float], confidence: float = 1 - ALPHA) -> tuple[float, float]:
    """mean ± t_{(1+confidence)/2, n-1} * std / sqrt(n); NaNs for fewer than 2 values."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return math.nan, math.nan
    half = sps.t.ppf((1 + confidence) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean() - half), float(x.mean() + half)


def summarize(values: Sequence[float]) -> Summary:
    """:class:`Summary` of the finite ``values`` (NaNs, e.g. a metric undefined for a run, are
    left out and do not count in n)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    low, high = t_interval(x)
    return Summary(int(x.size), float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan, low, high)


def paired(method: Mapping[int, float], baseline: Mapping[int, float]) -> Paired:
    """:class:`Paired` comparison over the seeds present (and finite) in both mappings."""
    seeds = sorted(s for s in set(method) & set(baseline)
                   if math.isfinite(method[s]) and math.isfinite(baseline[s]))
    d = np.array([method[s] - baseline[s] for s in seeds], dtype=float)
    if d.size < 2:
        return Paired(int(d.size), float(d.mean()) if d.size else math.nan, math.nan, math.nan, math.nan, math.nan)
    low, high = t_interval(d)
    if np.ptp(d) <= 16 * np.finfo(float).eps * np.abs(d).max():  # no spread beyond rounding: t is undefined
        p_t = 1.0 if np.abs(d).max() == 0 else 0.0
    else:
        p_t = float(sps.ttest_rel([method[s] for s in seeds], [baseline[s] for s in seeds]).pvalue)
    p_w = 1.0 if np.all(d == 0) else float(sps.wilcoxon(d, zero_method="wilcox").pvalue)
    return Paired(int(d.size), float(d.mean()), low, high, p_t, p_w)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of m p-values (Holm 1979): with the finite ones
    sorted, p_(1) <= ... <= p_(m),

        adj_(i) = min(1, max_{j <= i} (m - j + 1) p_(j)),

    in the input's order; rejecting where adj < alpha keeps the family-wise error rate at alpha
    under any dependence between the tests. NaNs (no test) stay NaN and do not count in m."""
    finite = sorted((p, i) for i, p in enumerate(pvalues) if math.isfinite(p))
    m = len(finite)
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
