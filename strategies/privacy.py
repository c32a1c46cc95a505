"""Differential privacy around any fedrec strategy's aggregation (``privacy.*``), with ε.

Mechanisms (``privacy.mechanism``; the math and its choices are in
:mod:`fedrec.privacy.mechanisms`, the accounting in :mod:`fedrec.privacy.accountant`):

* ``central`` -- client-level DP on the server (DP-FedAvg; Flower's
  ``DifferentialPrivacyServerSide{Fixed,Adaptive}Clipping``, row-wise for item-row uploads).
  The train phase becomes: the strategy's view of its replies as updates
  (:meth:`FedrecStrategy.update_view`, as the defenses use it), each client's whole update
  clipped to ``privacy.clip-norm`` (0: adaptive clipping, Andrew et al. 2021, from
  ``privacy.initial-clip-norm`` towards the ``privacy.target-quantile`` of the norms), their
  *unweighted* sum divided by the number of *sampled* clients, Gaussian noise of std
  ``z C / m`` on every coordinate (also rows nobody touched), and one synthetic reply
  carrying that update through the strategy's own ``aggregate`` (server lr, FedAdam...).
  ε(δ) after each round: ``privacy.noise-multiplier`` composed over the rounds with the
  round's sampling rate ``q = sampled / clients`` (Poisson subsampling, as Flower's and
  TensorFlow Privacy's DP-FedAvg accounting; fedrec samples a fixed-size cohort without
  replacement, which the Poisson analysis approximates). A crashed client is still counted
  in ``m`` (the denominator must not depend on who answered).
* ``local`` -- local DP: each client clips and noises its own upload before it leaves
  (:meth:`ClientHalf.privatize_upload`: FedAvg-family classifiers, FedMF). The server
  reports the largest per-client ε (each client composes the rounds it took part in,
  replace-one neighbours, no amplification).
* ``dpsgd`` -- sample-level DP-SGD in each client's local training through Opacus
  (classifiers); the server reports the largest per-client ε.

The noise of ``central`` is drawn from ``(run seed, "dp-noise", round)``: reproducible
simulations. A deployment that needs the guarantee against whoever knows the seed must
use an unpredictable seed (documented in the README).

Every round's ε goes to ``rounds.jsonl`` (``epsilon``, plus ``dp_clip_norm`` and
``dp_clipped`` for ``central``) and the final one to ``summary.json`` (``privacy``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedrec.config import RunConfig
from fedrec.errors import ConfigError
from fedrec.protocol import ClientReply
from fedrec.seeding import rng

#: the reply metric a client half reports its cumulative ε in (local, dpsgd)
CLIENT_EPSILON = "dp-epsilon"


def make_privacy(cfg: RunConfig) -> Privacy | None:
    return None if cfg.privacy.mechanism == "none" else Privacy(cfg)


def check_privacy(cfg: RunConfig, strategy_cls: Any) -> None:
    """Refuse what cannot run before anything starts (one-line errors)."""
    p = cfg.privacy
    if p.mechanism == "none":
        return
    from fedrec.privacy import accountant

    accountant._dpa()  # the 'privacy' extra is installed (one-line error otherwise)
    if cfg.defense.method != "none":
        raise ConfigError(
            f"privacy.mechanism = '{p.mechanism}' and defense.method = "
            f"'{cfg.defense.method}' both replace the aggregation; use one of them (DP's "
            "clipping already bounds every client's influence)"
        )
    from fedrec.plugins import import_object

    half = import_object(strategy_cls.client_half)
    supported = vars(half).get("privacy_mechanisms", ())  # declared by the half itself
    central_ok = central_supported(strategy_cls)
    allowed = (["central"] if central_ok else []) + list(supported)
    if p.mechanism in ("local", "dpsgd") and p.mechanism not in supported:
        raise ConfigError(
            f"privacy.mechanism = '{p.mechanism}' is not supported by strategy "
            f"'{strategy_cls.name}'; it supports: {', '.join(allowed) or 'none'}"
        )
    if p.mechanism == "central" and not central_ok:
        central = sorted(c.name for c in _registered() if vars(c).get("privacy_central", False))
        raise ConfigError(
            f"privacy.mechanism = 'central' is not supported by strategy '{strategy_cls.name}' "
            f"(its aggregation is not a mean of updates); strategies with central DP: "
            f"{', '.join(central)}"
            + (f"; its clients support: {', '.join(supported)}" if supported else "")
        )
    if p.mechanism == "dpsgd" and p.clip_norm <= 0:
        raise ConfigError("privacy.clip-norm must be > 0 for dpsgd (the per-example clip norm)")
    if p.mechanism == "local" and p.clip_norm <= 0:
        raise ConfigError("privacy.clip-norm must be > 0 for local DP (no adaptive clipping)")
    if p.mechanism == "central" and p.clip_norm == 0:
        from fedrec.privacy.mechanisms import adaptive_noise_params

        m = max(1, round(cfg.strategy.fraction_train * cfg.partition.num_clients))
        try:
            adaptive_noise_params(p.noise_multiplier, m)
        except ConfigError:
            raise ConfigError(
                f"adaptive clipping (privacy.clip-norm = 0) with {m} sampled clients needs "
                f"privacy.noise-multiplier < {m / 10:g} (the clipped count is noised with std "
                f"m / 20 = {m / 20:g}, Andrew et al. 2021); set a fixed privacy.clip-norm, "
                "sample more clients or lower the noise"
            ) from None


def central_supported(strategy_cls: Any) -> bool:
    """Central DP wraps the aggregation of a strategy whose ``aggregate`` is a mean of
    updates: the class in its MRO that defines ``aggregate`` must declare
    ``privacy_central = True`` itself (a plugin subclass that keeps FedAvg's aggregation
    keeps its DP; one with its own aggregation must declare it)."""
    owner = next((c for c in strategy_cls.__mro__ if "aggregate" in vars(c)), None)
    return owner is not None and bool(vars(owner).get("privacy_central", False))


def _registered() -> list[Any]:
    from fedrec.plugins import load_strategy, strategy_names

    out = []
    for name in strategy_names():
        try:
            out.append(load_strategy(name))
        except Exception:  # noqa: BLE001 - a broken plugin is not this error's subject
            continue
    return out


class Privacy:
    """The ``privacy.*`` mechanism of a run and its accountant (module docstring)."""

    def __init__(self, cfg: RunConfig):
        from fedrec.privacy.accountant import Accountant

        self.cfg = cfg
        p = cfg.privacy
        self.mechanism = p.mechanism
        self.accountant = Accountant(p.noise_multiplier, p.delta, p.accountant)
        self.adaptive: Any = None
        self.epsilon = 0.0
        self.clip_norm = p.clip_norm
        if self.mechanism == "central" and p.clip_norm == 0:
            from fedrec.privacy.mechanisms import AdaptiveClip

            m = max(1, round(cfg.strategy.fraction_train * cfg.partition.num_clients))
            self.adaptive = AdaptiveClip(
                p.initial_clip_norm,
                p.target_quantile,
                p.clip_lr,
                num_sampled=m,
                noise_multiplier=p.noise_multiplier,
            )

    # ------------------------------------------------------------------ central
    def aggregate(
        self,
        strategy: Any,
        server_round: int,
        replies: list[ClientReply],
        weights: list[np.ndarray],
        num_sampled: int,
    ) -> tuple[Any, dict[str, Any]]:
        """The strategy's aggregation of the clipped, noised mean update (``central``)."""
        from fedrec.privacy.mechanisms import central_gaussian

        replies = [r for r in replies if r.weights is not None]
        g = rng(self.cfg.seed, "dp-noise", server_round)
        ups = strategy.update_view(replies, weights)
        if self.adaptive is not None:
            C, z = self.adaptive.clip_norm, self.adaptive.model_noise_multiplier
            if self.adaptive.num_sampled != num_sampled:  # a partial last cohort, say
                from fedrec.privacy.mechanisms import AdaptiveClip

                state = {**self.adaptive.to_state(), "num_sampled": num_sampled}
                self.adaptive = AdaptiveClip.from_state(state)
                z = self.adaptive.model_noise_multiplier
        else:
            C, z = self.cfg.privacy.clip_norm, self.cfg.privacy.noise_multiplier
        row_delta, dense_delta, info = central_gaussian(ups, C, z, g, num_sampled=num_sampled)
        if self.adaptive is not None:
            self.adaptive.update(info["norms"], g)
        synthetic = strategy.replies_from_update(row_delta, dense_delta, replies, weights)
        new, metrics = strategy.aggregate(server_round, synthetic)
        self.clip_norm = float(C)
        stats = {"dp_clip_norm": float(C), "dp_clipped": int(info["num_clipped"])}
        return new, {**metrics, **stats}

    # ------------------------------------------------------------------ accounting
    def account(self, sampled: int, num_clients: int, replies: list[ClientReply]) -> float:
        """ε after this round: the server's accountant (``central``) or the largest ε the
        clients report (``local``, ``dpsgd``)."""
        if self.mechanism == "central":
            q = min(1.0, sampled / max(1, num_clients))
            self.epsilon = float(self.accountant.step(q)) if sampled else self.epsilon
        else:
            eps = [float(r.metrics[CLIENT_EPSILON]) for r in replies if CLIENT_EPSILON in r.metrics]
            self.epsilon = max([self.epsilon, *eps])
        return self.epsilon

    def summary(self) -> dict[str, Any]:
        p = self.cfg.privacy
        out = {
            "mechanism": self.mechanism,
            "epsilon": self.epsilon,
            "delta": p.delta,
            "noise_multiplier": p.noise_multiplier,
            "accountant": p.accountant,
            "clip_norm": self.clip_norm if self.mechanism == "central" else p.clip_norm,
        }
        if self.adaptive is not None:
            out["adaptive_clipping"] = True
        return out

    # ------------------------------------------------------------------ resume
    def to_state(self) -> dict[str, Any]:
        return {
            "accountant": self.accountant.to_state(),
            "adaptive": None if self.adaptive is None else self.adaptive.to_state(),
            "epsilon": self.epsilon,
            "clip_norm": self.clip_norm,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        from fedrec.privacy.accountant import Accountant
        from fedrec.privacy.mechanisms import AdaptiveClip

        self.accountant = Accountant.from_state(state["accountant"])
        if state["adaptive"] is not None:
            self.adaptive = AdaptiveClip.from_state(state["adaptive"])
        self.epsilon = float(state["epsilon"])
        self.clip_norm = float(state["clip_norm"])
