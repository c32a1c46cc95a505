"""Unlearning methods: plugins of the entry-point group ``fedrec.unlearning``.

A method is a class with a ``name``, the request ``kinds`` it can serve, the client
``actions`` it needs from the strategy's client half (checked before anything runs),
``Params`` (a dataclass of :func:`fedrec.config.key` fields read from
``unlearning.params.*``) and :meth:`UnlearningMethod.unlearn`, which gets a
:class:`~fedrec.unlearning.session.Job` (the strategy, the grid, the current model and
what the clients said they forget) and returns the new global model. Everything it does
goes through the job: train phases over retained clients, query actions to the
forgetting clients, state resets; the server never sees raw interactions or user
embeddings.

Built-ins (the survey's taxonomy, §5.2 of the reference notes):

- ``retrain`` — exact, the gold reference: every retained client resets its model state
  (keeping its forget records), the server resets its state, and the federation trains
  from the initial model for as many rounds as the original run had (same seeds), so it
  equals a run in which the forgotten data never existed;
- ``sisa`` — exact, partitioned (SISA / RecEraser / UltraRE): the run was trained as
  ``unlearning.shards`` independent shard federations; a request retrains only the
  shards of the clients concerned (an ``items`` request concerns every shard);
- ``federaser`` — FedEraser (Liu et al. 2021): from the stored per-round client updates,
  replay every ``interval``-th round from the initial model with the retained clients of
  that round training ``epoch-ratio`` of their local epochs, each update calibrated to
  the stored magnitude (:func:`fedrec.algorithms.unlearning.calibrate`);
- ``gradient-ascent`` — the forgetting clients upload one GradDiff update (ascent on the
  forget set, descent on what they keep), then ``rounds`` repair rounds on retained
  clients;
- ``finetune`` — ``rounds`` rounds of training on the retained data only;
- ``influence`` — one Newton / influence-function step on MF's item matrix from summed
  per-row statistics (gradient of the forget triples, Hessian diagonal of the kept ones).

Third-party registration::

    [project.entry-points."fedrec.unlearning"]
    mymethod = "mypkg.unlearn:MyMethod"
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from fedrec.config import key, validate_dataclass
from fedrec.errors import ConfigError, PluginError

if TYPE_CHECKING:
    from fedrec.unlearning.session import Job

log = logging.getLogger("fedrec")

GROUP = "fedrec.unlearning"
ALL_KINDS = ("interactions", "users", "items", "client")


@dataclass(frozen=True)
class NoParams:
    """A method without ``unlearning.params.*`` keys."""


class UnlearningMethod:
    """Base class of unlearning methods (module docstring)."""

    name: ClassVar[str] = "base"
    kinds: ClassVar[tuple[str, ...]] = ALL_KINDS
    actions: ClassVar[tuple[str, ...]] = ()  # client-half query actions the method sends
    exact: ClassVar[bool] = False
    needs_history: ClassVar[bool] = False
    needs_shards: ClassVar[bool] = False
    Params: ClassVar[type] = NoParams

    def __init__(self, params: Any = None, default_rounds: int = 0):
        self.params = params if params is not None else self.Params()
        self.default_rounds = default_rounds

    @classmethod
    def parse_params(cls, values: dict[str, Any]) -> Any:
        return validate_dataclass(cls.Params, values, "unlearning.params.")

    def rounds(self, fallback: int) -> int:
        """``unlearning.rounds`` if set, else the method's ``fallback``."""
        return self.default_rounds or fallback

    def unlearn(self, job: Job) -> list[np.ndarray]:
        raise NotImplementedError


class Retrain(UnlearningMethod):
    name = "retrain"
    exact = True

    def unlearn(self, job: Job) -> list[np.ndarray]:
        return job.retrain()


class SISA(UnlearningMethod):
    name = "sisa"
    exact = True
    needs_shards = True

    def unlearn(self, job: Job) -> list[np.ndarray]:
        return job.retrain_shards()


class Finetune(UnlearningMethod):
    name = "finetune"

    def unlearn(self, job: Job) -> list[np.ndarray]:
        n = self.rounds(5)
        return job.train_rounds(job.weights, job.serve_round + 1, job.serve_round + n)


@dataclass(frozen=True)
class AscentParams:
    epochs: int = key(
        1,
        "Local epochs of the forgetting clients' GradDiff update.",
        check=lambda v: v >= 1,
        check_doc=">= 1",
    )


class GradientAscent(UnlearningMethod):
    name = "gradient-ascent"
    actions = ("unlearn_ascent",)
    Params = AscentParams

    def unlearn(self, job: Job) -> list[np.ndarray]:
        forgetting = job.forgetting.clients
        w = job.weights
        if forgetting:
            replies = job.send(
                "unlearn_ascent", forgetting, w, {"local-epochs": self.params.epochs}
            )
            w = job.strategy.apply_updates(job.serve_round, w, replies)
        n = self.rounds(3)
        return job.train_rounds(w, job.serve_round + 1, job.serve_round + n)


@dataclass(frozen=True)
class FedEraserParams:
    interval: int = key(
        4,
        "Replay every interval-th stored round (FedEraser's Delta t).",
        check=lambda v: v >= 1,
        check_doc=">= 1",
    )
    epoch_ratio: float = key(
        0.5,
        "Local epochs of a calibration round as a share of train.local-epochs (at least 1 epoch).",
        check=lambda v: 0 < v <= 1,
        check_doc="in (0, 1]",
    )


class FedEraser(UnlearningMethod):
    name = "federaser"
    needs_history = True
    Params = FedEraserParams

    def unlearn(self, job: Job) -> list[np.ndarray]:
        p = self.params
        epochs = max(1, int(round(job.strategy.cfg.train.local_epochs * p.epoch_ratio)))
        return job.calibrate_from_history(p.interval, epochs)


@dataclass(frozen=True)
class InfluenceParams:
    damping: float = key(
        1.0,
        "Added to the Hessian diagonal before the Newton step (non-convex models need it).",
        check=lambda v: v > 0,
        check_doc="> 0",
    )


class Influence(UnlearningMethod):
    name = "influence"
    actions = ("unlearn_influence",)
    Params = InfluenceParams

    def unlearn(self, job: Job) -> list[np.ndarray]:
        from fedrec.algorithms.unlearning import influence_step
        from fedrec.messages import RowSparse

        forgetting = job.forgetting.clients
        if not forgetting:
            return job.weights
        w = job.weights
        grads = job.send("unlearn_influence", forgetting, w, {"op": "grad"})
        hess = job.send("unlearn_influence", job.retained(), w, {"op": "hess"})
        Q, moved = influence_step(
            w[0],
            [RowSparse.from_arrays(r.arrays()) for r in grads],
            [RowSparse.from_arrays(r.arrays()) for r in hess],
            self.params.damping,
        )
        log.info("influence: moved %d item rows", moved)
        out = [Q, *w[1:]]
        n = self.default_rounds  # no repair rounds unless unlearning.rounds asks for them
        return job.train_rounds(out, job.serve_round + 1, job.serve_round + n) if n else out


@dataclass(frozen=True)
class LMUnlearnParams:
    loss: str = key(
        "graddiff",
        "Forget loss: ga, graddiff (with the client's kept facts) or npo. GA and NPO (beta "
        "0.1) collapse the model's utility long before the forgotten facts look retrained "
        "(experiments/mrd/README.md); graddiff keeps more.",
        choices=("ga", "graddiff", "npo"),
    )
    sampling: str = key(
        "uniform",
        "Forget mini-batches: uniform, or mrd (easy-first, P ∝ exp(-rank(MRD)/tau)).",
        choices=("uniform", "mrd"),
    )
    curriculum: bool = key(
        False,
        "Server-side easy-first curriculum over clients by their mean log10 MRD: round t "
        "of R admits the easiest ceil(t * n / R) forgetting clients.",
    )
    steps: int = key(
        2, "Local unlearning steps per round.", check=lambda v: v >= 1, check_doc=">= 1"
    )
    lr: float = key(1e-3, "Local Adam learning rate.", check=lambda v: v > 0, check_doc="> 0")
    batch_size: int = key(
        16, "Forget (and retain) samples per step.", check=lambda v: v >= 1, check_doc=">= 1"
    )
    tau0: float = key(0.1, "Initial sampling temperature.", check=lambda v: v > 0, check_doc="> 0")
    tau_end: float = key(
        10.0,
        "Final sampling temperature (annealed geometrically).",
        check=lambda v: v > 0,
        check_doc="> 0",
    )
    beta: float = key(0.1, "NPO's beta.", check=lambda v: v > 0, check_doc="> 0")
    alpha: float = key(1.0, "GradDiff's retain weight.", check=lambda v: v >= 0, check_doc=">= 0")
    mrd_k: int = key(16, "MRD perturbations K.", check=lambda v: v >= 1, check_doc=">= 1")
    mrd_sigma: float = key(
        1e-2,
        "MRD noise scale (relative to each tensor's rms).",
        check=lambda v: v > 0,
        check_doc="> 0",
    )
    trace: bool = key(
        False,
        "Write the global weights after every unlearning round to "
        "<run>/unlearning_trace/round-<t>.npz (for per-round oracle evaluation).",
    )


class LMUnlearn(UnlearningMethod):
    """Federated LM unlearning (issue 12): the forgetting clients run local GA / GradDiff /
    NPO steps on their forgotten facts for ``rounds`` rounds, the server averages their
    models weighted by their fact counts. With ``sampling = mrd`` the clients draw
    MRD-weighted batches (scores from ``query.lm_mrd`` with a broadcast seed, kept on the
    client), with ``curriculum`` the server admits clients easy-first by their MRD summary.
    The temperature anneals over all ``rounds * steps`` steps of the request."""

    name = "lm-unlearn"
    kinds = ("users",)
    actions = ("lm_mrd", "lm_unlearn")
    Params = LMUnlearnParams

    def unlearn(self, job: Job) -> list[np.ndarray]:
        import math

        from fedrec.seeding import derive_seed

        p = self.params
        clients = sorted(job.forgetting.clients)
        w = job.weights
        if not clients:
            return w
        R = self.rounds(10)
        seed = derive_seed(job.strategy.cfg.seed, "lm-unlearn", job.serve_round) % 2**62
        order = clients
        if p.sampling == "mrd" or p.curriculum:
            replies = job.send(
                "lm_mrd", clients, w, {"mrd-seed": seed, "mrd-k": p.mrd_k, "mrd-sigma": p.mrd_sigma}
            )
            mean = {r.client_id: float(r.metrics.get("mrd-mean", 0.0)) for r in replies}
            order = sorted(clients, key=lambda c: (mean[c], c))  # easy (low MRD) first
        trace_dir = None
        if p.trace and job.strategy.stage_dir is not None:
            from pathlib import Path

            trace_dir = Path(job.strategy.stage_dir) / "unlearning_trace"
            trace_dir.mkdir(parents=True, exist_ok=True)
            np.savez(trace_dir / "round-0.npz", *w)
        for t in range(1, R + 1):
            active = order[: math.ceil(t * len(order) / R)] if p.curriculum else order
            cfg = {
                "loss": p.loss,
                "steps": p.steps,
                "lr": p.lr,
                "batch-size": p.batch_size,
                "sampling": p.sampling,
                "tau0": p.tau0,
                "tau-end": p.tau_end,
                "step-offset": (t - 1) * p.steps,
                "total-steps": R * p.steps,
                "beta": p.beta,
                "alpha": p.alpha,
                "seed": seed,
            }
            replies = [r for r in job.send("lm_unlearn", active, w, cfg) if r.weights is not None]
            replies = [r for r in replies if r.num_examples > 0]
            if replies:
                from fedrec.strategies.fedavg import weighted_average

                w = weighted_average(
                    [r.weights for r in replies], [r.num_examples for r in replies]
                )
            job.rounds_used += 1
            if trace_dir is not None:
                np.savez(trace_dir / f"round-{t}.npz", *w)
        return w


BUILTINS: dict[str, type[UnlearningMethod]] = {
    m.name: m for m in (Retrain, SISA, FedEraser, GradientAscent, Finetune, Influence, LMUnlearn)
}


def method_names() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=GROUP)} | set(BUILTINS))


def load_method(name: str) -> type[UnlearningMethod]:
    """Resolve a method name (entry point ``fedrec.unlearning``) or a dotted path."""
    from fedrec.plugins import import_object

    if ":" in name:
        cls = import_object(name)
    else:
        eps = {ep.name: ep for ep in entry_points(group=GROUP)}
        if name in eps:
            try:
                cls = eps[name].load()
            except Exception as exc:
                raise PluginError(f"unlearning method '{name}' failed to load: {exc}") from None
        elif name in BUILTINS:  # an uninstalled checkout still finds its own methods
            cls = BUILTINS[name]
        else:
            raise ConfigError(
                f"config key 'unlearning.method': unknown method '{name}'; registered: "
                f"{', '.join(method_names())}; or a dotted path package.module:Class"
            )
    if not (isinstance(cls, type) and issubclass(cls, UnlearningMethod)):
        raise PluginError(
            f"unlearning method '{name}' must subclass fedrec.unlearning.methods.UnlearningMethod"
        )
    return cls


def build_method(cfg) -> UnlearningMethod:
    cls = load_method(cfg.unlearning.method)
    return cls(cls.parse_params(dict(cfg.unlearning_params)), cfg.unlearning.rounds)
