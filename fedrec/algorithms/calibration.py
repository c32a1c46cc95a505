"""Per-group score re-calibration on a client's own rows (pure numpy / scikit-learn).

Why: FedFACT's post-processing is label-free: the constraint values the duals see are
plug-in values in which the scores ``eta`` stand in for the labels. For demographic
parity that changes nothing (its constraints do not involve ``Y``). For equal
opportunity and equalized odds the plug-in TPR/FPR of a classifier equal the label-based
ones only if ``eta`` is calibrated *within every (group, client) cell*; a federated score
model is calibrated on average, not per cell, so the calibrated classifier met the
plug-in constraint while its label-based train-set gap stayed several times above ``xi``
(Bank and Adult, EOP/EO; measured in ``experiments/fedfact/README.md``).

:class:`GroupCalibrator` fits, per group ``a`` of one client, an isotonic regression of
``1[Y = y]`` on ``eta_y`` (one-vs-rest, scikit-learn's ``IsotonicRegression``, the
non-parametric MLE of a monotone calibration map, clipped to [0, 1]). Isotonic fits are
exactly calibrated in-sample on their level sets: for any classifier that is a function
of the re-calibrated score of the row (which the calibrated FedFACT rule is, per group),
``sum_i (1[y_i = y] - eta_iy) h(eta_i) = 0`` on the fitted rows, so the plug-in and the
label-based train-set confusion matrices coincide (binary; for ``m > 2`` the one-vs-rest
maps are not renormalised, the equality is per class and approximate for rules that mix
classes). Binary tasks fit the positive class and set ``eta_0 = 1 - eta_1``.

Choices: every cell with rows is fitted, also one whose rows all carry the same label
(the isotonic MLE is then that constant: a client whose 18 young rows hold no positive
gets score 0 for them; skipping such cells left the plug-in and the label-based values
apart, measured on Bank EOP); the map is monotone so the order of rows within a group
is kept. Groups without rows on the client keep their scores (nothing to fit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedrec.errors import ConfigError

__all__ = ["CALIBRATIONS", "GroupCalibrator"]

CALIBRATIONS: tuple[str, ...] = ("auto", "none", "isotonic")


@dataclass(eq=False)
class GroupCalibrator:
    """Isotonic per-(group, class) calibration maps fitted on one client's rows.

    ``fit(eta, y, a, A)`` then ``apply(eta, a)``; both take ``eta`` ``(n, m)`` scores.
    """

    min_rows: int = 1
    maps: dict[tuple[int, int], Any] = field(default_factory=dict, init=False, repr=False)
    m: int = field(default=0, init=False)

    def fit(self, eta: Any, y: Any, a: Any, A: int) -> GroupCalibrator:
        from sklearn.isotonic import IsotonicRegression

        e, yy, aa = self._check(eta, y, a)
        self.m = e.shape[1]
        classes = [1] if self.m == 2 else list(range(self.m))
        self.maps = {}
        for g in range(int(A)):
            rows = aa == g
            if rows.sum() < self.min_rows:
                continue
            for c in classes:
                target = (yy[rows] == c).astype(np.float64)
                iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
                self.maps[(g, c)] = iso.fit(e[rows, c], target)
        return self

    def apply(self, eta: Any, a: Any) -> np.ndarray:
        """Re-calibrated copy of ``eta`` (cells without a fitted map are unchanged)."""
        e = np.array(eta, dtype=np.float64, copy=True)
        aa = np.asarray(a).astype(np.int64)
        if e.ndim != 2 or aa.shape != (e.shape[0],):
            raise ConfigError(f"eta must be (n, m) and a (n,); got {e.shape} and {aa.shape}")
        if self.m and e.shape[1] != self.m:
            raise ConfigError(f"eta has {e.shape[1]} classes; the calibrator was fit on {self.m}")
        for (g, c), iso in self.maps.items():
            rows = aa == g
            if rows.any():
                e[rows, c] = iso.predict(e[rows, c])
                if e.shape[1] == 2:
                    e[rows, 0] = 1.0 - e[rows, 1]
        return e

    @staticmethod
    def _check(eta: Any, y: Any, a: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        e = np.asarray(eta, dtype=np.float64)
        yy = np.asarray(y).astype(np.int64)
        aa = np.asarray(a).astype(np.int64)
        if e.ndim != 2 or yy.shape != (e.shape[0],) or aa.shape != yy.shape:
            raise ConfigError(
                f"eta must be (n, m) with y and a (n,); got {e.shape}, {yy.shape}, {aa.shape}"
            )
        return e, yy, aa
