"""Seed statistics: mean ± std over seeds, and whether a difference of means is larger than the
seed noise (a Welch 95 % confidence interval that excludes zero)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float | None  # sample standard deviation (ddof=1); None for one value

    @classmethod
    def of(cls, values) -> "Summary":
        values = np.asarray(list(values), dtype=float)
        std = float(values.std(ddof=1)) if len(values) > 1 else None
        return cls(len(values), float(values.mean()), std)

    def text(self, digits: int = 2) -> str:
        if self.std is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


@dataclass(frozen=True)
class Delta:
    mean: float
    low: float | None  # the confidence interval of the difference; None with fewer than 2 seeds
    high: float | None

    @property
    def significant(self) -> bool | None:
        if self.low is None:
            return None
        return self.low > 0 or self.high < 0

    def text(self, digits: int = 2) -> str:
        mark = "*" if self.significant else ""
        return f"{self.mean:+.{digits}f}{mark}"


def delta(values, baseline) -> Delta:
    """Difference of means `values - baseline` with Welch's t interval when both have n >= 2."""
    a = np.asarray(list(values), dtype=float)
    b = np.asarray(list(baseline), dtype=float)
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return Delta(diff, None, None)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Delta(diff, diff, diff)
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + LEVEL / 2, dof)) * se
    return Delta(diff, diff - half, diff + half)


CAPTION = ("Cells: mean ± sample standard deviation over seeds; n: the number of seeds (one seed "
           "shows the value alone; a cell with fewer seeds than its row says so). Δ (a difference "
           "of means) is marked * when its Welch 95 % confidence interval excludes zero; with "
           "fewer than 2 seeds on either side no interval exists and Δ is never marked.")
