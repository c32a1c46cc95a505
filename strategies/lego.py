"""Federated LEGO (``lego``): post-training multi-attribute unlearning on FedMF-BPR.

LEGO (Yu et al., ACM MM'25; ``reference/unlearning_attack.md`` §1, federated mapping
§1.9) edits only the user embeddings of a trained recommender so that an attribute
inference attack on them fails, with a per-user utility budget: Step 1 *Embedding
Calibration* (one calibration ``U_t*`` per attribute, vCLUB mutual information
minimised against a variational estimator ``q_phi_t``, every row projected onto its
ball ``||e_u - e_u^0|| <= eps * ||e_u^0||``), Step 2 *Flexible Combination*
``U(alpha) = sum_t alpha_t U_t*`` with ``alpha = softmax(alpha_tilde)`` learned for the
summed MI. The maths, its defaults and why it factorises per user are in
:mod:`fedrec.algorithms.lego`; this module is the message schedule around it.

Run structure
-------------
Rounds ``1..R`` (``num-server-rounds``) are FedMF exactly (same parameters, same
client code: :class:`~fedrec.clients.lego.LegoClient` extends ``MFClient``). In
:meth:`on_round_end` of round ``R`` (where FedMF releases its embeddings) the
unlearning requests run as extra ``query.lego_*`` phases, then the item table is
frozen for good:

1. request ``attributes`` (the first request; all of them calibrated in parallel);
2. ``add-attributes`` (optional): Step 1 for the new attributes only, Step 2 again
   over every active attribute;
3. ``withdraw-attributes`` (optional): no Step 1, the calibrations are dropped and
   Step 2 is solved again over the remaining ones (none left: back to ``U0``).

After each request the clients set their embeddings ``P = U(alpha)`` and the ranking
evaluation of FedMF runs (``evaluate`` phase, frozen item table). Each request
restarts from the original ``U0`` (kept on the client); stored calibrations are never
recomputed ("LEGO bricks", §1.5).

Phases of one request (all clients in every phase; ``k`` = attributes in the message)
-------------------------------------------------------------------------------------
- ``query.lego_prior`` (Step 1, once): the server assigns each requested attribute a
  free state slot (``slots`` travels with ``attrs`` in every message, see
  :mod:`fedrec.clients.lego`); the clients reset those slots to ``U0`` (zero Adam
  state) and return one-hot label counts of their consenting users. The server sums
  them: prior ``p_t`` and ``count_t`` per attribute. The number of classes ``K_t`` is
  the dataset's public schema (``attr_names``), not learnt from the clients.
- ``query.lego_calibrate`` (Step 1, ``warmup-phi + steps * n-phi + 1`` messages
  when ``steps, n-phi >= 1``, :func:`calibration_schedule`): the
  broadcast carries the current estimator parameters ``phi_t`` of every attribute
  being calibrated (``4 k`` float32 arrays) and two flags. ``step``: first take one
  per-user Adam step on each calibrated row with ``phi_t`` fixed and project it onto
  its ball (the priors come with the message). ``fit``: return the estimators'
  cross-entropy gradient sums on the (new) calibrated rows. The server adds them and
  takes one Adam step per estimator (:func:`~fedrec.algorithms.lego.classifier_step`).
  An embedding step and the next estimator update use the same ``phi`` (the update
  after ``n-phi`` fits), so they share one message: the driver's sequence
  ``warmup x fit, steps x (n-phi x fit, step)`` becomes that many messages.
- ``query.lego_combine`` (Step 2, ``warmup-phi + combine-steps * (n-phi + 1)``
  messages, only with ``k >= 2`` active attributes): the broadcast carries
  ``alpha_tilde`` and fresh estimators ``phi_t`` (one per active attribute, seeded
  ``attr_seed(seed, "combine:" + t)``); ``mode = fit`` returns their gradient sums on
  ``U(alpha)``; ``mode = grad`` returns ``d J / d alpha_tilde`` (``J = sum_t w_t sum_u
  m_{t,u}``, ``w_t = 1 / count_t`` broadcast) and the summed vCLUB terms, after which the
  server takes one Adam step on ``alpha_tilde`` (``combine-lr``).
- ``query.lego_apply`` (once): the clients set ``P = U(alpha)`` (one active attribute:
  its calibration; none: ``U0``); the slots of withdrawn attributes become free.

With every client in every message (full batch, no sampling), this loop is
the pure drivers :func:`~fedrec.algorithms.lego.calibrate` and
:func:`~fedrec.algorithms.lego.combine` (and :class:`~fedrec.algorithms.lego.Lego` for
the dynamic requests) with ``seed = derive_seed(cfg.seed, "lego") % 2**31`` and the
consent mask of :func:`fedrec.clients.lego.consent_mask`: the tests compare final
embeddings and alpha with the drivers run on the released original embeddings (equal
to rounding: sums are formed per client and then added, in float64). Differences in
the *procedure* that leave the result unchanged: (1) the attributes of a request are
calibrated in parallel (their runs are independent, each with its own seed);
(2) estimator updates after the last embedding step of a calibration are not sent
(they change only the discarded estimator); (3) a combination is computed once per
request, whereas ``Lego.add`` recombines after every single attribute (Step 2 always
starts from scratch, so the final state is the same). The consent mask is one draw
per user, shared by all attributes.

What leaves a client (and what does not)
----------------------------------------
Leaves: label counts of consenting users (prior phase); gradient sums of the shared
estimators over consenting users, their count, loss sum and vCLUB sum (calibrate and
combine ``fit`` phases); ``d J / d alpha_tilde`` sums and vCLUB sums over consenting
users (combine ``grad``); FedMF's traffic before (item-row deltas) and FedMF's
evaluation replies after each request (per-user ranking metrics and top-K lists, a
measurement of the simulation). Non-consenting users (``consent-fraction`` < 1)
contribute exact zeros to every sum (a client with no consenting user sends no array).
Never leaves: user embeddings (``U0``, calibrations, ``U(alpha)``), per-user Adam
state, attribute labels, interactions; except in the opt-in audit
``release-embeddings = true``, which collects the embeddings before LEGO
(``embeddings_original.npz``) and after the last request (``embeddings.npz``).

What the sums reveal. They are sums over a client's consenting users, meant to be
added under secure aggregation (§1.9): the server needs only the totals. fedrec does
not ship secure aggregation; this simulation adds them in the clear. With one user per
client (``users-per-client = 1``) a consenting user's sums identify it: the counts are
the one-hot label, the output-bias gradient is ``softmax - onehot(a_u)`` and the first
layer's gradient is ``delta (x) e_u`` (row ``i`` of ``dW1`` over ``db1_i`` is the current
calibrated embedding). Consent therefore means "I trust the aggregator"; a deployment
must add secure aggregation or use several users per client (cross-silo).

Cost. A message costs one round trip of every client; the calibration of ``k``
attributes in parallel needs as many messages as that of one attribute, the payload
grows with ``k``. In the local simulation a LEGO message to 943 per-user clients on one
node takes 1-2 s (mostly the ClientApp's per-client state (de)serialisation), so the
library-default schedule (~1,500 messages per request) is slow there; see
``experiments/lego/README.md`` for a compressed schedule and measured costs. Per
request the server records the wall time of Step 1 and Step 2, the message counts and
the uploaded bytes (payload arrays and metric values, 8 bytes per number), so a dynamic
request can be compared with a full one.

Outputs: ``lego.json`` (seed, options, per-request attributes, alpha, timings, counts,
MI histories, ranking metrics before and after every request); the last round's
``rounds.jsonl`` row gets ``lego`` (the same without histories) and its evaluation is
the one after the last request (so ``summary.json``'s ``final`` is the unlearned
model; the FedMF model's metrics are ``lego.before``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedrec.algorithms import lego as L
from fedrec.config import key
from fedrec.errors import ConfigError, FedrecError
from fedrec.strategies.fedmf import FedMF, FedMFParams

log = logging.getLogger("fedrec")

_KEY = "strategy.params."
METRIC_KEYS = ("ndcg@10", "hr@10", "ndcg@20", "hr@20", "coverage@10", "user_ndcg@10_gap")


@dataclass(frozen=True)
class FedLegoParams(FedMFParams):
    attributes: str = key("gender,age_bucket,occupation", "First unlearning request: comma "
                          "list of categorical user attributes of the dataset (ml-100k: gender, "
                          "age_bucket, occupation; synthetic-rec: gender), calibrated in "
                          "parallel, then combined.")
    add_attributes: str = key("", "Second (dynamic) request: attributes added after the first; "
                              "only they are calibrated, the combination is solved again. "
                              "Empty = no second request.")
    withdraw_attributes: str = key("", "Third request: attributes (of the first two) no longer "
                                   "to unlearn; their calibrations are dropped and the "
                                   "combination is solved again. Empty = no third request.")
    eps: float = key(0.2, "Relative per-row ball radius: every user embedding stays within "
                     "eps * ||e_u^0|| of its original (0 = no change).",
                     check=lambda v: v >= 0, check_doc=">= 0")
    steps: int = key(200, "Step 1: embedding steps per calibration (T).",
                     check=lambda v: v >= 0, check_doc=">= 0")
    n_phi: int = key(5, "Estimator updates per embedding step (Step 1) and per alpha step "
                     "(Step 2); each is one message.", check=lambda v: v >= 0, check_doc=">= 0")
    warmup_phi: int = key(100, "Estimator updates before the first embedding / alpha step.",
                          check=lambda v: v >= 0, check_doc=">= 0")
    lr_phi: float = key(1e-3, "Adam step size of the estimators q_phi (server side).",
                        check=lambda v: v > 0, check_doc="> 0")
    lr_emb: float = key(1e-2, "Per-user Adam step of the embedding step, relative to the "
                        "row's ball: lr_u = lr-emb * eps_u / sqrt(d).",
                        check=lambda v: v > 0, check_doc="> 0")
    hidden: int = key(64, "Hidden units of the estimators (MLP d -> hidden -> K, ReLU).",
                      check=lambda v: v >= 1, check_doc=">= 1")
    combine_steps: int = key(50, "Step 2: Adam steps on alpha_tilde.",
                             check=lambda v: v >= 0, check_doc=">= 0")
    combine_lr: float = key(0.03, "Step 2: Adam step size on alpha_tilde.",
                            check=lambda v: v > 0, check_doc="> 0")
    consent_fraction: float = key(1.0, "Share of users whose labels train the shared estimators "
                                  "and enter the prior and alpha gradients (each user draws "
                                  "its consent from a seed; every user calibrates its own "
                                  "embedding).", check=lambda v: 0 < v <= 1,
                                  check_doc="in (0, 1]")


def attribute_list(value: str, name: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``; a repeated name is a :class:`ConfigError`."""
    out = [a.strip() for a in str(value).split(",") if a.strip()]
    dup = sorted({a for a in out if out.count(a) > 1})
    if dup:
        raise ConfigError(f"config key '{_KEY}{name}': attribute(s) {', '.join(dup)} listed twice")
    return out


def categorical_attributes(ds) -> list[str]:
    """Attributes LEGO can unlearn: user attributes with class names (``attr_names``)."""
    return sorted(a for a in (ds.attr_names or {}) if a in (ds.user_attrs or {}))


def plan_requests(p: FedLegoParams, ds) -> list[tuple[str, list[str]]]:
    """Validate the attribute keys against the dataset; ``[(op, attributes), ...]``."""
    allowed = categorical_attributes(ds)
    if not allowed:
        raise ConfigError(f"config key 'dataset.name': '{ds.name}' has no categorical user "
                          "attribute; lego needs one (ml-100k, synthetic-rec)")
    first = attribute_list(p.attributes, "attributes")
    add = attribute_list(p.add_attributes, "add-attributes")
    withdraw = attribute_list(p.withdraw_attributes, "withdraw-attributes")
    for name, attrs in (("attributes", first), ("add-attributes", add),
                        ("withdraw-attributes", withdraw)):
        for a in attrs:
            if a not in allowed:
                raise ConfigError(f"config key '{_KEY}{name}': '{a}' is not a categorical user "
                                  f"attribute of '{ds.name}'; allowed: {', '.join(allowed)}")
    if not first:
        raise ConfigError(f"config key '{_KEY}attributes': empty; give at least one of "
                          f"{', '.join(allowed)}")
    again = [a for a in add if a in first]
    if again:
        raise ConfigError(f"config key '{_KEY}add-attributes': {', '.join(again)} already in "
                          f"the first request; allowed: attributes not in '{p.attributes}'")
    stray = [a for a in withdraw if a not in first + add]
    if stray:
        raise ConfigError(f"config key '{_KEY}withdraw-attributes': {', '.join(stray)} never "
                          f"requested; allowed: {', '.join(first + add)}")
    plan = [("request", first)]
    if add:
        plan.append(("add", add))
    if withdraw:
        plan.append(("withdraw", withdraw))
    return plan


def calibration_schedule(steps: int, n_phi: int, warmup_phi: int) -> list[tuple[bool, bool]]:
    """Messages ``(step, fit)`` of one calibration (see the module docstring).

    The driver's operations ``warmup x fit, steps x (n_phi x fit, step)`` with every
    ``step`` merged into the following ``fit`` and the fits after the last step dropped.
    """
    ops = ["fit"] * warmup_phi + (["fit"] * n_phi + ["step"]) * steps
    while ops and ops[-1] == "fit":
        ops.pop()
    msgs, i = [], 0
    while i < len(ops):
        if ops[i] == "step":
            merged = i + 1 < len(ops) and ops[i + 1] == "fit"
            msgs.append((True, merged))
            i += 2 if merged else 1
        else:
            msgs.append((False, True))
            i += 1
    return msgs


def lego_seed(cfg) -> int:
    """The seed passed to the LEGO drivers (``attr_seed`` derives per-attribute seeds)."""
    from fedrec.seeding import derive_seed

    return int(derive_seed(cfg.seed, "lego") % 2 ** 31)


class FedLego(FedMF):
    """FedMF-BPR, then LEGO unlearning requests as federated query phases."""

    name = "lego"
    Params = FedLegoParams
    client_half = "fedrec.clients.lego:LegoClient"
    progress_keys = ("ndcg@10", "hr@10", "coverage@10")

    @classmethod
    def preflight(cls, cfg) -> None:
        super().preflight(cfg)
        from fedrec.clients.recsys import cfg_user_data

        ds, _ = cfg_user_data(cfg)
        plan_requests(cls.parse_params(cfg), ds)

    def setup(self, grid) -> None:
        super().setup(grid)
        self.plan = plan_requests(self.params, self.ds)
        self.seed = lego_seed(self.cfg)
        self.num_classes = {a: len(self.ds.attr_names[a]) for a in categorical_attributes(self.ds)}
        self.active: dict[str, dict[str, Any]] = {}   # attr -> prior, count, slot (in order)
        self.lego_log: dict[str, Any] = {}
        self.released_original: dict[str, np.ndarray] | None = None
        self._Q: list[np.ndarray] | None = None
        self._last_eval = None

    def after_aggregate(self, server_round, weights, grid):
        weights = super().after_aggregate(server_round, weights, grid)
        self._Q = list(weights)
        return weights

    # ------------------------------------------------------------------ messaging
    def _send(self, grid, action: str, weights, config, stats: dict) -> list:
        replies = self.communicate(grid, f"query.{action}", self.client_ids, self._rnd,
                                   weights, config)
        if len(replies) != len(self.client_ids):
            raise FedrecError(f"query.{action}: {len(self.client_ids) - len(replies)} clients did "
                              "not reply; LEGO needs every client in every phase (full batch)")
        up = 0
        for r in replies:
            up += sum(int(np.asarray(w).nbytes) for w in (r.weights or []))
            up += 8 * sum(len(v) if isinstance(v, list) else 1 for v in r.metrics.values())
        stats["messages"] = stats.get("messages", 0) + 1
        stats["upload_bytes"] = stats.get("upload_bytes", 0) + up
        return replies

    @staticmethod
    def _sum_fit(replies, sizes: list[int]):
        """Summed flat gradients (split per attribute), counts and loss sums."""
        k = len(sizes)
        total = np.zeros(sum(sizes))
        count, loss = np.zeros(k, dtype=np.int64), np.zeros(k)
        for r in replies:
            count += np.asarray(r.metrics["count"], dtype=np.int64)
            loss += np.asarray(r.metrics["loss"], dtype=np.float64)
            if r.weights is not None:
                total += r.weights[0]
        bounds = np.cumsum([0] + sizes)
        return [total[bounds[i]:bounds[i + 1]] for i in range(k)], count, loss

    def _shapes(self, K: int) -> list[tuple[int, ...]]:
        h, d = self.params.hidden, self.params.dim
        return [(h, d), (h,), (K, h), (K,)]

    def _unflatten(self, flat: np.ndarray, K: int) -> list[np.ndarray]:
        out, i = [], 0
        for s in self._shapes(K):
            n = int(np.prod(s))
            out.append(flat[i:i + n].reshape(s))
            i += n
        return out

    def _fit_step(self, replies, attrs, params, states, ce) -> None:
        """Server half of one estimator update for every attribute of the message."""
        sizes = [sum(int(np.prod(s)) for s in self._shapes(self.num_classes[t])) for t in attrs]
        grads, count, loss = self._sum_fit(replies, sizes)
        for i, t in enumerate(attrs):
            params[t], states[t] = L.classifier_step(
                params[t], self._unflatten(grads[i], self.num_classes[t]), int(count[i]),
                states[t], self.params.lr_phi)
            if count[i]:
                ce[t].append(float(loss[i] / count[i]))

    def _names(self, attrs: list[str]) -> dict[str, str]:
        """The ``attrs`` / ``slots`` config of a message (client state slots, see
        :mod:`fedrec.clients.lego`)."""
        return {"attrs": ",".join(attrs),
                "slots": ",".join(str(self.active[t]["slot"]) for t in attrs)}

    # ------------------------------------------------------------------ Step 1
    def _calibrate(self, grid, attrs: list[str], stats: dict) -> dict[str, Any]:
        p = self.params
        used = {v["slot"] for v in self.active.values()}
        free = (s for s in range(len(used) + len(attrs)) if s not in used)
        for t in attrs:
            self.active[t] = {"slot": next(free)}
        replies = self._send(grid, "lego_prior", None, self._names(attrs), stats)
        counts = np.sum([np.asarray(r.metrics["counts"], dtype=np.int64) for r in replies], axis=0)
        bounds = np.cumsum([0] + [self.num_classes[t] for t in attrs])
        priors = {}
        for i, t in enumerate(attrs):
            c = counts[bounds[i]:bounds[i + 1]]
            if c.sum() == 0:
                raise FedrecError(f"config key '{_KEY}consent-fraction': no user consents, so "
                                  f"the prior of '{t}' is undefined; raise it")
            priors[t] = c / c.sum()
            self.active[t].update(prior=priors[t], count=int(c.sum()))
        params = {t: L.classifier_init(p.dim, self.num_classes[t], p.hidden,
                                       L.attr_seed(self.seed, t)) for t in attrs}
        states: dict[str, Any] = {t: None for t in attrs}
        hist = {t: {"mi": [], "ce": []} for t in attrs}
        schedule = calibration_schedule(p.steps, p.n_phi, p.warmup_phi)
        prior_cfg = {f"prior.{t}": priors[t].tolist() for t in attrs}
        for j, (step, fit) in enumerate(schedule):
            config = {**self._names(attrs), "step": step, "fit": fit,
                      **(prior_cfg if step else {})}
            replies = self._send(grid, "lego_calibrate", [a for t in attrs for a in params[t]],
                                 config, stats)
            if step:
                mi = np.sum([r.metrics["mi"] for r in replies], axis=0)
                for i, t in enumerate(attrs):
                    hist[t]["mi"].append(float(mi[i] / self.active[t]["count"]))
            if fit:
                self._fit_step(replies, attrs, params, states, {t: hist[t]["ce"] for t in attrs})
            if (j + 1) % 100 == 0:
                log.info("lego: calibrating %s, message %d/%d", ",".join(attrs), j + 1,
                         len(schedule))
        return hist

    # ------------------------------------------------------------------ Step 2
    def _combine(self, grid, stats: dict) -> tuple[np.ndarray, dict[str, list]]:
        p = self.params
        names = list(self.active)
        k = len(names)
        at = np.zeros(k)
        hist: dict[str, list] = {"objective": [], "mi": [], "alpha": []}
        if k < 2:
            return at, hist
        params = {t: L.classifier_init(p.dim, self.num_classes[t], p.hidden,
                                       L.attr_seed(self.seed, "combine:" + t)) for t in names}
        states: dict[str, Any] = {t: None for t in names}
        w = np.array([1.0 / max(self.active[t]["count"], 1) for t in names])
        grad_cfg = {"mode": "grad", "weights": w.tolist(),
                    **{f"prior.{t}": self.active[t]["prior"].tolist() for t in names}}
        at_state = None
        ce = {t: [] for t in names}
        for step in range(p.combine_steps):
            base = {**self._names(names), "alpha-tilde": at.tolist()}
            for _ in range(p.n_phi + (p.warmup_phi if step == 0 else 0)):
                replies = self._send(grid, "lego_combine", [a for t in names for a in params[t]],
                                     {**base, "mode": "fit"}, stats)
                self._fit_step(replies, names, params, states, ce)
            replies = self._send(grid, "lego_combine", [a for t in names for a in params[t]],
                                 {**base, **grad_cfg}, stats)
            g = np.sum([r.metrics["g-alpha"] for r in replies], axis=0)
            mi = np.sum([r.metrics["mi"] for r in replies], axis=0)
            hist["alpha"].append(L.softmax(at).tolist())
            hist["mi"].append((mi * w).tolist())
            hist["objective"].append(float((mi * w).sum()))
            (at,), at_state = L.adam_step([at], [g], at_state, p.combine_lr)
        return at, hist

    # ------------------------------------------------------------------ requests
    def _evaluate_now(self, grid) -> Any:
        replies = self.communicate(grid, "evaluate", self.client_ids, self._rnd, self._Q,
                                   self.evaluate_config(self._rnd))
        return self.evaluation_metrics(replies)

    def _request(self, grid, op: str, attrs: list[str]) -> dict[str, Any]:
        stats_cal: dict[str, int] = {}
        stats_comb: dict[str, int] = {}
        t0 = time.perf_counter()
        cal_hist: dict[str, Any] = {}
        if op == "withdraw":
            for t in attrs:
                del self.active[t]
        else:
            cal_hist = self._calibrate(grid, attrs, stats_cal)
        t1 = time.perf_counter()
        at, comb_hist = self._combine(grid, stats_comb)
        names = list(self.active)
        self._send(grid, "lego_apply", None, {**self._names(names), "alpha-tilde": at.tolist()},
                   stats_comb)
        t2 = time.perf_counter()
        fm = self._evaluate_now(grid)
        alpha = L.softmax(at) if names else np.zeros(0)
        entry = {
            "op": op, "attributes": attrs, "active": names,
            "alpha": {t: float(a) for t, a in zip(names, alpha)},
            "alpha_tilde": at.tolist(),
            "calibrations_run": [] if op == "withdraw" else list(attrs),
            "num_calibrations": 0 if op == "withdraw" else len(attrs),
            "calibrate_s": t1 - t0, "combine_s": t2 - t1, "total_s": t2 - t0,
            "messages": {"calibrate": stats_cal.get("messages", 0),
                         "combine": stats_comb.get("messages", 0)},
            "upload_bytes": {"calibrate": stats_cal.get("upload_bytes", 0),
                             "combine": stats_comb.get("upload_bytes", 0)},
            "metrics": _metrics(fm),
            "history": {"calibrate": cal_hist, "combine": comb_hist},
        }
        self._last_eval = fm
        log.info("lego: %s %s -> active %s, alpha %s, %.1f s (Step 1 %.1f s, Step 2 %.1f s), "
                 "NDCG@10 %.4f", op, ",".join(attrs), ",".join(names) or "-",
                 json.dumps({t: round(a, 3) for t, a in entry["alpha"].items()}),
                 entry["total_s"], entry["calibrate_s"], entry["combine_s"],
                 entry["metrics"].get("ndcg@10", float("nan")))
        return entry

    def on_round_end(self, server_round: int, record) -> None:
        if server_round != self.total_rounds():
            return
        grid, self._rnd = self._grid, server_round
        if self._Q is None:
            raise FedrecError("lego: no item table to evaluate with (no round aggregated)")
        if self.params.release_embeddings:
            self.release(grid, server_round)
            self.released_original = self.released
        requests = [self._request(grid, op, attrs) for op, attrs in self.plan]
        if self.params.release_embeddings:
            self.release(grid, server_round)
        p = self.params
        self.lego_log = {
            "seed": self.seed, "eps": p.eps, "eps_relative": True,
            "calibrate_options": {"steps": p.steps, "n_phi": p.n_phi, "warmup_phi": p.warmup_phi,
                                  "lr_phi": p.lr_phi, "lr_emb": p.lr_emb, "lr_relative": True,
                                  "hidden": p.hidden},
            "combine_options": {"steps": p.combine_steps, "lr": p.combine_lr, "n_phi": p.n_phi,
                                "warmup_phi": p.warmup_phi, "lr_phi": p.lr_phi,
                                "hidden": p.hidden},
            "consent_fraction": p.consent_fraction,
            "consenting_users": {t: v["count"] for t, v in self.active.items()},
            "total_calibrations": sum(r["num_calibrations"] for r in requests),
            "before": _metrics(record.evaluation),
            "requests": requests,
        }
        record.extra["lego"] = {k: v for k, v in self.lego_log.items() if k != "requests"}
        record.extra["lego"]["requests"] = [{k: v for k, v in r.items() if k != "history"}
                                            for r in requests]
        if self._last_eval is not None:
            record.evaluation = self._last_eval

    def write_outputs(self, out_dir) -> None:
        super().write_outputs(out_dir)
        if self.released_original:
            np.savez(out_dir / "embeddings_original.npz", **self.released_original)
        if self.lego_log:
            (out_dir / "lego.json").write_text(json.dumps(_finite(self.lego_log), indent=1) + "\n")


def _metrics(fm) -> dict[str, float]:
    if fm is None:
        return {}
    return {k: float(fm.overall[k]) for k in METRIC_KEYS if k in fm.overall}


def _finite(v: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, non-finite floats to None."""
    if isinstance(v, dict):
        return {str(k): _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_finite(x) for x in (v.tolist() if isinstance(v, np.ndarray) else v)]
    if isinstance(v, (float, np.floating)):
        return float(v) if np.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v
