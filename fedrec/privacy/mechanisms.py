r"""Gaussian mechanisms for federated updates, row-wise (pure numpy; no flwr import).

Row-wise counterparts of Flower 1.42's DP code (``flwr.supercore.differential_privacy``,
``DifferentialPrivacyServerSideFixedClipping`` / ``...AdaptiveClipping``, ``LocalDpMod``)
for the row-sparse uploads of :class:`fedrec.algorithms.robust.RowUpdates`. Every function
is deterministic given its :class:`numpy.random.Generator`; the ε of a run comes from
:mod:`fedrec.privacy.accountant`.

**Central DP, fixed clipping** (:func:`central_gaussian`; McMahan et al. 2018, DP-FedAvg).
Client ``c``'s whole update -- its touched rows :math:`u_{c,r}` and its dense part
:math:`v_c`, as one vector :math:`x_c` -- is clipped, the clipped updates are averaged
*unweighted* over a fixed denominator ``m`` (``num_sampled``), and Gaussian noise is added
to every coordinate:

.. math::
    \tilde x_c = x_c \min\!\Big(1, \frac{C}{\|x_c\|_2}\Big), \qquad
    \Delta = \frac{1}{m} \sum_c \tilde x_c + \mathcal N\!\big(0, \sigma^2 I\big), \qquad
    \sigma = \frac{z\,C}{m}.

Adding or removing one client changes :math:`\sum_c \tilde x_c` by at most ``C`` in L2, so
:math:`\Delta` is the Gaussian mechanism with noise multiplier ``z`` on the sum (``z C``
std on the sum, ``z C / m`` on the mean: Flower's ``compute_stdv``) -- client-level DP: all
of a client's data at once is protected. Choices:

- *Unweighted.* FedAvg's example weights ``n_c / N`` would make one client's influence
  data-dependent (a client with many examples moves the mean by more than ``C / m``) and
  ``N`` itself private; the unweighted mean with a fixed denominator keeps the sensitivity
  at ``C / m`` (as Flower's DP wrappers, which require equal weights for accounting).
- *Fixed denominator.* ``m`` defaults to the number of clients in ``updates``; under Poisson
  client sampling pass the *expected* cohort size ``q N`` (a count that depends on who was
  sampled would itself leak).
- *Every row is noised*, also the rows no client touched: a row that comes back exactly zero
  reveals that nobody in the cohort touched it. The output is a dense ``(R, d)`` table.
  Untouched rows of a client count as zero (as in FedAvg's row delta diluted by the
  clients that did not touch the row, :func:`fedrec.algorithms.robust.fedavg_scale`).
- *Noise order.* One draw ``rng.normal(0, sigma, (R, d))`` for the rows, then one of size
  ``p`` for the dense part; no draw at all when ``sigma == 0``.

In the dense case (every client touches every row) this is exactly Flower's server-side
fixed clipping: ``compute_clip_model_update`` on each client's flat update
``[rows (R, d), dense (p,)]``, the equal-weight average, and ``compute_stdv(z, C, m)``.

**Central DP, adaptive clipping** (:class:`AdaptiveClip`; Andrew et al. 2021). Each round
the server also releases the noised fraction of clients whose update was *not* clipped and
moves ``C`` geometrically towards the ``gamma``-quantile of the update norms:

.. math::
    \tilde b = \frac{1}{m}\Big(\sum_c \mathbf 1[\|x_c\| \le C] + \mathcal N(0, \sigma_b^2)\Big),
    \qquad C \leftarrow C \exp\!\big(-\eta (\tilde b - \gamma)\big).

The count has sensitivity 1 (its centred form :math:`b - 1/2`, 1/2); releasing it with
std :math:`\sigma_b` and the model update with noise multiplier :math:`z_\Delta` is one
Gaussian mechanism with noise multiplier ``z`` when

.. math::
    z_\Delta = \big(z^{-2} - (2\sigma_b)^{-2}\big)^{-1/2}

(Andrew et al., Thm. 1; Flower's ``compute_adaptive_noise_params``, default
:math:`\sigma_b = m / 20`, error if :math:`z \ge 2\sigma_b`). So the accountant is fed the
nominal ``z``, and :func:`central_gaussian` is called with
:attr:`AdaptiveClip.model_noise_multiplier` and the *current* ``C``; :meth:`AdaptiveClip.update`
(with the same round's norms) then yields the next round's ``C``. Note: Flower 1.42's
Message-API ``DifferentialPrivacyServerSideAdaptiveClipping`` counts the *clipped* updates
and applies the same update formula, which moves ``C`` away from its target; the paper (and
Flower's deprecated ``DPFedAvgAdaptive``, whose clients send the *unclipped* bit) count the
unclipped ones, as done here.

**Local DP** (:func:`local_gaussian`). A FedMF client clips its whole upload (all ``k``
item rows together) to ``C`` and adds :math:`\mathcal N(0, (zC)^2)` to every coordinate
before it leaves the device (the clip of Flower's ``LocalDpMod``). The noise is Gaussian
with a noise multiplier so that the RDP/PLD accountant gives the ε of many rounds
(:func:`fedrec.privacy.accountant.gaussian_ldp_epsilon`, replace-one: sensitivity ``2C``).
``LocalDpMod`` instead calibrates a single release with the classic bound
:math:`\sigma = \Delta \sqrt{2 \ln(1.25/\delta)} / \varepsilon` (Dwork and Roth, Thm. A.1,
valid for ε < 1 only), :func:`classic_gaussian_stdv`. **Not protected** by local DP on the
values: *which* rows were uploaded -- the ids are sent in clear and reveal the items the
user interacted with; hiding them needs a fixed or padded id set (e.g. all rows, or
sampled fake items), whose rows then get noise too.

References
----------
.. [1] McMahan, H. B., Ramage, D., Talwar, K. and Zhang, L. "Learning Differentially
    Private Recurrent Language Models", ICLR 2018 (DP-FedAvg, client-level DP).
.. [2] Andrew, G., Thakkar, O., McMahan, H. B. and Ramaswamy, S. "Differentially Private
    Learning with Adaptive Clipping", NeurIPS 2021.
.. [3] Dwork, C. and Roth, A. "The Algorithmic Foundations of Differential Privacy",
    2014 (the classic Gaussian calibration, Thm. A.1).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fedrec.algorithms.robust import RowUpdates, clip_updates, update_norms
from fedrec.errors import ConfigError

__all__ = [
    "AdaptiveClip",
    "adaptive_noise_params",
    "central_gaussian",
    "central_stdv",
    "classic_gaussian_stdv",
    "local_gaussian",
]


# ------------------------------------------------------------------ validation
def _real(name: str, value: Any, *, lo: float, lo_open: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    if ok:
        x = float(value)
        ok = math.isfinite(x) and (x > lo if lo_open else x >= lo)
    if not ok:
        bound = f"> {lo:g}" if lo_open else f">= {lo:g}"
        raise ConfigError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def _check_rng(rng: Any) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return rng


# ------------------------------------------------------------------ central DP
def central_stdv(noise_multiplier: float, clip_norm: float, num_sampled: float) -> float:
    """Noise std on the mean of ``num_sampled`` clipped updates: ``z * C / m`` (Flower's
    ``compute_stdv``)."""
    return float(noise_multiplier * clip_norm / num_sampled)


def central_gaussian(
    updates: RowUpdates,
    clip_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator,
    num_sampled: float | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Client-level central DP on row-sparse updates: clip, unweighted mean, Gaussian noise.

    Parameters
    ----------
    updates : RowUpdates
        One round's uploads (their example weights are ignored: see the module docstring).
    clip_norm : float
        ``C >= 0``: each client's whole update (rows and dense) is scaled by
        ``min(1, C / ||x_c||)`` (1 for a zero update).
    noise_multiplier : float
        ``z >= 0``; 0 adds no noise (and draws nothing from ``rng``).
    rng : numpy.random.Generator
    num_sampled : float, optional
        ``m > 0``, the fixed denominator of the mean (default: the number of clients).

    Returns
    -------
    rows_delta : ndarray (R, d)
        ``sum_c clipped rows_c / m`` plus ``N(0, sigma^2)`` on *every* entry.
    dense_delta : ndarray (p,)
        ``sum_c clipped dense_c / m`` plus ``N(0, sigma^2)``.
    info : dict
        ``clip_factors`` (n,), ``norms`` (n,) (before clipping), ``num_clipped``, ``stdv``
        (``sigma = z C / m``), ``clip_norm``, ``noise_multiplier``, ``num_sampled``.
    """
    if not isinstance(updates, RowUpdates):
        raise ConfigError(f"updates must be a RowUpdates, got {type(updates).__name__}")
    C = _real("clip_norm", clip_norm, lo=0.0)
    z = _real("noise_multiplier", noise_multiplier, lo=0.0)
    rng = _check_rng(rng)
    m = (
        float(updates.n)
        if num_sampled is None
        else _real("num_sampled", num_sampled, lo=0.0, lo_open=True)
    )
    norms = update_norms(updates)
    clipped, factors = clip_updates(updates, C)
    rows = np.zeros((updates.num_rows, updates.d))
    for ids, r in zip(clipped.ids, clipped.rows):
        rows[ids] += r  # ids are unique per client
    rows /= m
    dense = clipped.dense.sum(axis=0) / m
    stdv = central_stdv(z, C, m)
    if stdv > 0:
        rows += rng.normal(0.0, stdv, rows.shape)
        dense = dense + rng.normal(0.0, stdv, dense.shape)
    info: dict[str, Any] = {
        "clip_factors": factors,
        "norms": norms,
        "num_clipped": int(np.count_nonzero(factors < 1.0)),
        "stdv": stdv,
        "clip_norm": C,
        "noise_multiplier": z,
        "num_sampled": m,
    }
    return rows, dense, info


# ------------------------------------------------------------------ adaptive clipping
def adaptive_noise_params(
    noise_multiplier: float, num_sampled: float, clipped_count_stddev: float | None = None
) -> tuple[float, float]:
    """``(sigma_b, z_delta)`` as Flower's ``compute_adaptive_noise_params``.

    For ``z > 0``: ``sigma_b`` defaults to ``m / 20`` and must exceed ``z / 2``;
    ``z_delta = (z**-2 - (2 sigma_b)**-2) ** -0.5``. For ``z == 0``: ``sigma_b`` defaults to
    0 and ``z_delta = 0`` (no noise anywhere).
    """
    z = _real("noise_multiplier", noise_multiplier, lo=0.0)
    m = _real("num_sampled", num_sampled, lo=0.0, lo_open=True)
    if clipped_count_stddev is not None:
        clipped_count_stddev = _real("clipped_count_stddev", clipped_count_stddev, lo=0.0)
    if z == 0:
        return (0.0 if clipped_count_stddev is None else clipped_count_stddev), 0.0
    sigma_b = m / 20 if clipped_count_stddev is None else clipped_count_stddev
    if z >= 2 * sigma_b:
        raise ConfigError(
            f"clipped_count_stddev ({sigma_b:g}; default num_sampled / 20) must be > "
            f"noise_multiplier / 2 ({z / 2:g}) for adaptive clipping: increase it or "
            "num_sampled, or decrease noise_multiplier"
        )
    z_delta = (z ** (-2) - (2 * sigma_b) ** (-2)) ** -0.5
    return float(sigma_b), float(z_delta)


class AdaptiveClip:
    """The clip norm of adaptive clipping (Andrew et al. 2021), updated once per round.

    Parameters
    ----------
    initial_clip_norm : float
        ``C_0 > 0``.
    target_quantile : float
        ``gamma`` in ``[0, 1]``: the target fraction of *unclipped* updates (``C`` tracks
        the ``gamma``-quantile of the update norms).
    clip_lr : float
        ``eta > 0``, the geometric learning rate.
    clipped_count_stddev : float, optional
        ``sigma_b``; default ``num_sampled / 20`` (0 if ``noise_multiplier == 0``).
    num_sampled : float
        ``m``: the fixed denominator of the count (and of :func:`central_gaussian`).
    noise_multiplier : float
        The nominal ``z`` (what the accountant composes); the model update gets
        :attr:`model_noise_multiplier`.

    Round protocol: ``central_gaussian(updates, ac.clip_norm, ac.model_noise_multiplier,
    rng, ac.num_sampled)``, then ``ac.update(info["norms"], rng)``.
    """

    def __init__(
        self,
        initial_clip_norm: float = 0.1,
        target_quantile: float = 0.5,
        clip_lr: float = 0.2,
        clipped_count_stddev: float | None = None,
        *,
        num_sampled: float,
        noise_multiplier: float = 0.0,
    ) -> None:
        self.clip_norm = _real("initial_clip_norm", initial_clip_norm, lo=0.0, lo_open=True)
        self.target_quantile = _real("target_quantile", target_quantile, lo=0.0)
        if self.target_quantile > 1:
            raise ConfigError(f"target_quantile must be in [0, 1], got {target_quantile!r}")
        self.clip_lr = _real("clip_lr", clip_lr, lo=0.0, lo_open=True)
        self.num_sampled = _real("num_sampled", num_sampled, lo=0.0, lo_open=True)
        self.noise_multiplier = _real("noise_multiplier", noise_multiplier, lo=0.0)
        self._count_stddev_arg = clipped_count_stddev
        self.clipped_count_stddev, self.model_noise_multiplier = adaptive_noise_params(
            self.noise_multiplier, self.num_sampled, clipped_count_stddev
        )
        self.rounds = 0
        self.last_unclipped_fraction: float | None = None

    def update(self, norms: Any, rng: np.random.Generator) -> float:
        """One round: the noised unclipped fraction of ``norms`` under the current ``C``,
        then ``C <- C exp(-eta (b - gamma))``. Returns the new ``C`` (also
        :attr:`clip_norm`). Draws one normal from ``rng`` iff ``sigma_b > 0``."""
        rng = _check_rng(rng)
        x = np.asarray(norms, dtype=np.float64)
        if x.ndim != 1 or not np.all(np.isfinite(x)) or np.any(x < 0):
            raise ConfigError("norms must be a 1-D array of finite numbers >= 0")
        count = float(np.count_nonzero(x <= self.clip_norm))
        if self.clipped_count_stddev > 0:
            count += float(rng.normal(0.0, self.clipped_count_stddev))
        b = count / self.num_sampled
        self.clip_norm *= math.exp(-self.clip_lr * (b - self.target_quantile))
        self.rounds += 1
        self.last_unclipped_fraction = b
        return self.clip_norm

    def to_state(self) -> dict[str, Any]:
        """JSON-able state (settings, the current ``C`` and the round count)."""
        return {
            "clip_norm": self.clip_norm,
            "target_quantile": self.target_quantile,
            "clip_lr": self.clip_lr,
            "clipped_count_stddev": self._count_stddev_arg,
            "num_sampled": self.num_sampled,
            "noise_multiplier": self.noise_multiplier,
            "rounds": self.rounds,
            "last_unclipped_fraction": self.last_unclipped_fraction,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> AdaptiveClip:
        """Rebuild from :meth:`to_state` (the caller restores its own ``rng``)."""
        try:
            ac = cls(
                state["clip_norm"],
                state["target_quantile"],
                state["clip_lr"],
                state["clipped_count_stddev"],
                num_sampled=state["num_sampled"],
                noise_multiplier=state["noise_multiplier"],
            )
            ac.rounds = int(state["rounds"])
            last = state.get("last_unclipped_fraction")
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"adaptive clipping state is malformed: {exc!r}") from exc
        ac.last_unclipped_fraction = None if last is None else float(last)
        return ac

    def __repr__(self) -> str:
        return (
            f"AdaptiveClip(clip_norm={self.clip_norm:.6g}, target_quantile="
            f"{self.target_quantile}, clip_lr={self.clip_lr}, num_sampled={self.num_sampled}, "
            f"noise_multiplier={self.noise_multiplier}, rounds={self.rounds})"
        )


# ------------------------------------------------------------------ local DP
def local_gaussian(
    rows: Any, clip_norm: float, noise_multiplier: float, rng: np.random.Generator
) -> np.ndarray:
    """Local DP for one client's upload: clip all of it (L2, jointly) to ``C``, then add
    ``N(0, (z C)^2)`` to every coordinate.

    Parameters
    ----------
    rows : array-like (k, d)
        The client's uploaded row updates (any shape: the whole array is one vector).
    clip_norm : float
        ``C >= 0``.
    noise_multiplier : float
        ``z >= 0`` (0: clip only, nothing drawn).
    rng : numpy.random.Generator

    Returns
    -------
    ndarray, same shape, float64
    """
    C = _real("clip_norm", clip_norm, lo=0.0)
    z = _real("noise_multiplier", noise_multiplier, lo=0.0)
    rng = _check_rng(rng)
    x = np.array(rows, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ConfigError("rows must be finite (no NaN or inf)")
    norm = float(np.linalg.norm(x.ravel()))
    if norm > C:
        x *= C / norm
    if z > 0 and C > 0:
        x += rng.normal(0.0, z * C, x.shape)
    return x


def classic_gaussian_stdv(sensitivity: float, epsilon: float, delta: float) -> float:
    """``sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon``: the one-shot calibration of
    Flower's ``LocalDpMod`` (Dwork and Roth, Thm. A.1; a valid (ε, δ) bound for ε < 1)."""
    s = _real("sensitivity", sensitivity, lo=0.0)
    eps = _real("epsilon", epsilon, lo=0.0, lo_open=True)
    d = _real("delta", delta, lo=0.0, lo_open=True)
    if d >= 1:
        raise ConfigError(f"delta must be in (0, 1), got {delta!r}")
    return float(s * np.sqrt(2 * np.log(1.25 / d)) / eps)
