"""Federated LEGO (``lego``): post-training multi-attribute unlearning on FedMF-BPR.

LEGO (Yu et al., ACM MM'25; ``reference/unlearning_attack.md`` §1, federated mapping
§1.9) edits only the user embeddings of a trained recommender so that an attribute
inference attack on them fails, with a per-user utility budget: Step 1 *Embedding
Calibration* (one calibration ``U_t*`` per attribute, vCLUB mutual information
minimised against a variational estimator ``q_phi_t``, every row projected onto its
ball ``||e_u - e_u^0|| <= eps * ||e_u^0||``), Step 2 *Flexible Combination*
``U(alpha) = sum_t alpha_t U_t*`` with ``alpha = softmax(alpha_tilde)`` learned for the
(balanced) MI of all attributes. The maths, its defaults and why it factorises per user are in
:mod:`fedrec.algorithms.lego`; the messages in :mod:`fedrec.specs.lego`; what each
message makes leave a client, in :mod:`fedrec.clients.lego`. This module is the message
schedule around them.

Run structure
-------------
Rounds ``1..R`` (``num-server-rounds``) are FedMF exactly (same parameters, same
client code: :class:`~fedrec.clients.lego.LegoClient` extends ``MFClient``). In
:meth:`after_evaluate` of round ``R`` (where FedMF releases its embeddings) the
unlearning requests run as extra ``query.lego_*`` phases, then the item table is
frozen for good:

1. request ``attributes`` (the first request; all of them calibrated in parallel);
2. ``add-attributes`` (optional): Step 1 for the new attributes only, Step 2 again
   over every active attribute (warm-started from the first request's solution);
3. ``withdraw-attributes`` (optional): no Step 1, the calibrations are dropped and
   Step 2 is solved again over the remaining ones (warm; none left: back to ``U0``).

After each request the clients set their embeddings ``P = U(alpha)`` and the ranking
evaluation of FedMF runs (``evaluate`` phase, frozen item table). Each request
restarts from the original ``U0`` (kept on the client); stored calibrations are never
recomputed ("LEGO bricks", §1.5).

Phases of one request (all clients in every phase; ``k`` = attributes in the message)
-------------------------------------------------------------------------------------
- ``query.lego_prior`` (Step 1, once): the server assigns each requested attribute a
  free state slot (``slots`` travels with ``attrs`` in every message); the clients
  reset those slots to ``U0`` (zero Adam state) and return one-hot label counts of
  their consenting users. The server sums them: prior ``p_t`` and ``count_t`` per
  attribute. The number of classes ``K_t`` is the dataset's public schema
  (``attr_names``), not learnt from the clients.
- ``query.lego_calibrate`` (Step 1, ``warmup-phi + steps * n-phi + 1`` messages
  when ``steps, n-phi >= 1``, :func:`calibration_schedule`): the broadcast carries the
  current estimator parameters ``phi_t`` of every attribute still being calibrated (one
  flat float32 vector each) and two flags. ``step``: first take one per-user Adam step
  on each calibrated row with ``phi_t`` fixed and project it onto its ball (the priors
  come with the message). ``fit``: return the estimators' cross-entropy gradient sums
  on the (new) calibrated rows. The server adds them and takes one Adam step per
  estimator (:func:`~fedrec.algorithms.estimators.classifier_step`). An embedding step
  and the next estimator update use the same ``phi`` (the update after ``n-phi``
  fits), so they share one message: the driver's sequence ``warmup x fit, steps x
  (n-phi x fit, step)`` becomes that many messages. **Early stop**
  (``calibrate-patience``, ``calibrate-tol``; :func:`~fedrec.algorithms.lego.calibration_plateau`
  on the summed vCLUB terms the step messages return): an attribute whose estimate has
  plateaued after its peak leaves the messages (its slot keeps its last step); Step 1
  ends when none is left, after ``len(calibration_schedule(s_max, ...))`` messages
  with ``s_max`` the longest calibration's steps.
- ``query.lego_combine`` (Step 2, only with ``k >= 2`` active attributes; a cold
  request ``warmup-phi + combine-steps * (n-phi + 1)`` messages): the broadcast carries
  ``alpha_tilde`` and the estimators ``phi_t`` (fresh ones seeded ``attr_seed(seed,
  "combine:" + t)``, or the previous request's: warm start below); ``mode = fit``
  returns the gradient sums of the estimators named in ``fit-attrs`` on ``U(alpha)``
  (mixed over every active slot); ``mode = grad`` returns ``d J / d alpha_tilde``
  (``J = sum_t w_t sum_u m_{t,u}`` with ``w_t = c_t / count_t`` broadcast, ``c_t`` the
  coefficients of the objective ``combine-balance``:
  :func:`~fedrec.algorithms.lego.balance_weights`, the scale ``s_t = H(p_t)`` from the
  summed prior counts, for ``minmax`` the previous step's summed terms) and the summed
  vCLUB terms, after which the server takes one Adam step on ``alpha_tilde``
  (``combine-lr``); optional early stop ``combine-tol`` / ``combine-window``.
  **Warm start** (``warm-combine-steps > 0`` and a previous Step 2): ``alpha_tilde`` of
  the surviving attributes, new ones at their mean; the previous estimators and Adam
  states; only new estimators get the ``warmup-phi`` updates, in messages that carry
  only them (``fit-attrs``); then ``warm-combine-steps`` alpha steps
  (``warmup-phi * [new] + warm-combine-steps * (n-phi + 1)`` messages). The server
  keeps the solution (:attr:`FedLego.combination`) for the next request.
- ``query.lego_apply`` (once): the clients set ``P = U(alpha)`` (one active attribute:
  its calibration; none: ``U0``); the slots of withdrawn attributes become free.

With every client in every message (full batch, no sampling), this loop is
the pure drivers :func:`~fedrec.algorithms.lego.calibrate` and
:func:`~fedrec.algorithms.lego.combine` (and :class:`~fedrec.algorithms.lego.Lego` for
the dynamic requests: ``Lego.request`` for a request of several attributes,
``Lego.add``, ``Lego.withdraw``) with ``seed = derive_seed(cfg.seed, "lego") % 2**31``
and the consent mask of :func:`fedrec.clients.lego.consent_mask`: the tests compare
final embeddings, alpha, steps run and message counts of every request with the
drivers run on the released original embeddings (equal to rounding: sums are formed
per client and then added, in float64; the early-stop and balance decisions use the
same sums). Differences in the *procedure* that leave the result unchanged: (1) the
attributes of a request are calibrated in parallel (their runs are independent, each
with its own seed); (2) estimator updates after the last embedding step of a
calibration are not applied to anything (they change only the discarded estimator).
The consent mask is one draw per user, shared by all attributes.

Cost. A message costs one round trip of every client; the calibration of ``k``
attributes in parallel needs as many messages as that of its longest calibration, the
payload grows with the number still running. Per request the server records the wall
time of Step 1 and Step 2, the steps run, whether Step 2 was warm, the message counts
and the uploaded bytes (payload arrays and metric values, 8 bytes per number), so a
dynamic request can be compared with a full one (measured costs:
``experiments/lego/README.md``).

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
from typing import Any, ClassVar

import numpy as np

from fedrec.algorithms import estimators as E
from fedrec.algorithms import lego as L
from fedrec.errors import ConfigError, FedrecError
from fedrec.optim import adam_step
from fedrec.specs import lego as spec
from fedrec.specs.lego import FedLegoParams
from fedrec.strategies.fedmf import FedMF

log = logging.getLogger("fedrec")

_KEY = "strategy.params."
METRIC_KEYS = ("ndcg@10", "hr@10", "ndcg@20", "hr@20", "coverage@10", "user_ndcg@10_gap")


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
        raise ConfigError(
            f"config key 'dataset.name': '{ds.name}' has no categorical user "
            "attribute; lego needs one (ml-100k, synthetic-rec)"
        )
    first = attribute_list(p.attributes, "attributes")
    add = attribute_list(p.add_attributes, "add-attributes")
    withdraw = attribute_list(p.withdraw_attributes, "withdraw-attributes")
    for name, attrs in (
        ("attributes", first),
        ("add-attributes", add),
        ("withdraw-attributes", withdraw),
    ):
        for a in attrs:
            if a not in allowed:
                raise ConfigError(
                    f"config key '{_KEY}{name}': '{a}' is not a categorical user "
                    f"attribute of '{ds.name}'; allowed: {', '.join(allowed)}"
                )
    if not first:
        raise ConfigError(
            f"config key '{_KEY}attributes': empty; give at least one of {', '.join(allowed)}"
        )
    again = [a for a in add if a in first]
    if again:
        raise ConfigError(
            f"config key '{_KEY}add-attributes': {', '.join(again)} already in "
            f"the first request; allowed: attributes not in '{p.attributes}'"
        )
    stray = [a for a in withdraw if a not in first + add]
    if stray:
        raise ConfigError(
            f"config key '{_KEY}withdraw-attributes': {', '.join(stray)} never "
            f"requested; allowed: {', '.join(first + add)}"
        )
    plan = [("request", first)]
    if add:
        plan.append(("add", add))
    if withdraw:
        plan.append(("withdraw", withdraw))
    return plan


#: Messages ``(step, fit)`` of one calibration (the pure module's, re-exported here).
calibration_schedule = L.calibration_schedule


@dataclass
class Traffic:
    """The round a step of a request runs in, and its message count and upload bytes."""

    server_round: int
    messages: int = 0
    upload_bytes: int = 0


def lego_seed(cfg) -> int:
    """The seed passed to the LEGO drivers (``attr_seed`` derives per-attribute seeds)."""
    from fedrec.seeding import derive_seed

    return int(derive_seed(cfg.seed, "lego") % 2**31)


class FedLego(FedMF):
    """FedMF-BPR, then LEGO unlearning requests as federated query phases."""

    name = "lego"
    Params = FedLegoParams
    client_half = "fedrec.clients.lego:LegoClient"
    # carried between rounds and requests: FedMF's lazy Adam, the active attributes (prior,
    # count, scale, state slot), the last Step-2 solution (alpha_tilde, estimators and their
    # Adam states: a dynamic request warm-starts from it) and the request log
    server_state_attrs: ClassVar[tuple[str, ...]] = ("_adam", "active", "combination", "lego_log")
    progress_keys = ("ndcg@10", "hr@10", "coverage@10")

    @classmethod
    def preflight(cls, cfg) -> None:
        super().preflight(cfg)
        from fedrec.recsys.data import cfg_user_data

        ds, _ = cfg_user_data(cfg)
        plan_requests(cls.parse_params(cfg), ds)

    def setup(self, grid) -> None:
        super().setup(grid)
        self.plan = plan_requests(self.params, self.ds)
        self.seed = lego_seed(self.cfg)
        self.num_classes = {a: len(self.ds.attr_names[a]) for a in categorical_attributes(self.ds)}
        self.active: dict[str, dict[str, Any]] = {}  # attr -> prior, count, scale, slot
        self.combination: dict[str, Any] | None = None  # the last Step 2 (warm starts)
        self.lego_log: dict[str, Any] = {}
        self.released_original: dict[str, np.ndarray] | None = None
        self._Q: list[np.ndarray] | None = None
        self._last_eval = None

    def after_aggregate(self, server_round, weights, grid):
        weights = super().after_aggregate(server_round, weights, grid)
        self._Q = list(weights)
        return weights

    # ------------------------------------------------------------------ messaging
    def _send(self, grid, action: str, weights, config, traffic: Traffic) -> list:
        """One ``query.<action>`` phase to every client in ``traffic.server_round``; counts
        the message and its upload into ``traffic``."""
        replies = self.communicate(
            grid, f"query.{action}", self.client_ids, traffic.server_round, weights, config
        )
        if len(replies) != len(self.client_ids):
            raise FedrecError(
                f"query.{action}: {len(self.client_ids) - len(replies)} clients did "
                "not reply; LEGO needs every client in every phase (full batch)"
            )
        up = 0
        for r in replies:
            up += sum(int(np.asarray(w).nbytes) for w in (r.weights or []))
            up += 8 * sum(int(np.size(v)) for v in r.metrics.values())
        traffic.messages += 1
        traffic.upload_bytes += up
        return replies

    def _layouts(self, attrs: list[str]):
        return [
            spec.classifier_layout(self.params.dim, self.params.hidden, self.num_classes[t])
            for t in attrs
        ]

    def _request_config(self, attrs: list[str]) -> dict[str, Any]:
        """The ``attrs`` / ``slots`` of a message (client state slots, see
        :mod:`fedrec.clients.lego`)."""
        return spec.request_config(attrs, [self.active[t]["slot"] for t in attrs])

    def _fit_step(self, replies, attrs, params, states, ce) -> None:
        """Server half of one estimator update for every attribute of the message: sum
        the clients' flat gradient sums, counts and losses (client order), one Adam step
        per estimator."""
        layouts = self._layouts(attrs)
        total = np.zeros(sum(lay.size for lay in layouts))
        count, loss = np.zeros(len(attrs), dtype=np.int64), np.zeros(len(attrs))
        for r in replies:
            count += np.asarray(r.metrics[spec.COUNT], dtype=np.int64)
            loss += np.asarray(r.metrics[spec.LOSS], dtype=np.float64)
            if r.weights is not None and len(r.weights[0]):  # empty: nobody consents
                total += r.weights[0]
        for i, (t, grads) in enumerate(zip(attrs, spec.unpack_grad_sums(total, layouts))):
            params[t], states[t] = E.classifier_step(
                params[t], grads, int(count[i]), states[t], self.params.lr_phi
            )
            if count[i]:
                ce[t].append(float(loss[i] / count[i]))

    # ------------------------------------------------------------------ Step 1
    def _calibrate(self, grid, attrs: list[str], traffic: Traffic) -> dict[str, Any]:
        p = self.params
        used = {v["slot"] for v in self.active.values()}
        free = (s for s in range(len(used) + len(attrs)) if s not in used)
        for t in attrs:
            self.active[t] = {"slot": next(free)}
        replies = self._send(grid, spec.PRIOR, None, self._request_config(attrs), traffic)
        counts = np.sum(
            [np.asarray(r.metrics[spec.COUNTS], dtype=np.int64) for r in replies], axis=0
        )
        bounds = np.cumsum([0] + [self.num_classes[t] for t in attrs])
        priors = {}
        for i, t in enumerate(attrs):
            c = counts[bounds[i] : bounds[i + 1]]
            if c.sum() == 0:
                raise FedrecError(
                    f"config key '{_KEY}consent-fraction': no user consents, so "
                    f"the prior of '{t}' is undefined; raise it"
                )
            priors[t] = c / c.sum()
            self.active[t].update(
                prior=priors[t], count=int(c.sum()), scale=L.attribute_scale(priors[t])
            )
        params = {
            t: E.classifier_init(p.dim, self.num_classes[t], p.hidden, L.attr_seed(self.seed, t))
            for t in attrs
        }
        states: dict[str, Any] = {t: None for t in attrs}
        hist: dict[str, dict[str, list[float]]] = {t: {"mi": [], "ce": []} for t in attrs}
        schedule = calibration_schedule(p.steps, p.n_phi, p.warmup_phi)
        running = list(attrs)  # attributes still calibrating (early stop drops them)
        for j, (step, fit) in enumerate(schedule):
            config = {
                **self._request_config(running),
                spec.STEP: step,
                spec.FIT: fit,
                **({spec.prior_key(t): priors[t] for t in running} if step else {}),
            }
            replies = self._send(
                grid,
                spec.CALIBRATE,
                spec.pack_classifiers([params[t] for t in running], self._layouts(running)),
                config,
                traffic,
            )
            if step:
                mi = np.sum([r.metrics[spec.MI] for r in replies], axis=0)
                for i, t in enumerate(running):
                    hist[t]["mi"].append(float(mi[i] / self.active[t]["count"]))
            if fit:
                self._fit_step(
                    replies, running, params, states, {t: hist[t]["ce"] for t in running}
                )
            if step:
                running = [
                    t
                    for t in running
                    if not L.calibration_plateau(
                        hist[t]["mi"], p.calibrate_patience, p.calibrate_tol
                    )
                ]
                if not running:
                    break
            if (j + 1) % 100 == 0:
                log.info(
                    "lego: calibrating %s, message %d/%d", ",".join(running), j + 1, len(schedule)
                )
        return hist

    # ------------------------------------------------------------------ Step 2
    def _combine(self, grid, traffic: Traffic) -> tuple[np.ndarray, dict[str, Any]]:
        """Step 2 over the active attributes (warm from :attr:`combination` when it holds
        estimators of some of them and ``warm-combine-steps > 0``): ``(alpha_tilde,
        history)``; the solution is kept in :attr:`combination` for the next request."""
        p = self.params
        names = list(self.active)
        k = len(names)
        hist: dict[str, Any] = {"objective": [], "mi": [], "alpha": [], "weights": []}
        prev = self.combination if p.warm_combine_steps > 0 else None
        self.combination = None
        warm = [t for t in names if prev is not None and t in prev["params"]]
        hist.update(warm=bool(warm), steps=0, cold=len(names) - len(warm) if k > 1 else 0)
        if k < 2:
            return np.zeros(k), hist
        pv: dict[str, Any] = prev or {}  # non-empty whenever warm is
        if warm:
            old = list(pv["names"])
            at = L.initial_alpha_tilde(
                names, {t: float(pv["alpha_tilde"][old.index(t)]) for t in warm}
            )
            steps = p.warm_combine_steps
        else:
            at, steps = np.zeros(k), p.combine_steps
        params = {
            t: pv["params"][t]
            if t in warm
            else E.classifier_init(
                p.dim, self.num_classes[t], p.hidden, L.attr_seed(self.seed, "combine:" + t)
            )
            for t in names
        }
        states: dict[str, Any] = {t: pv["states"][t] if t in warm else None for t in names}
        cold = [t for t in names if t not in warm]
        inv = np.array([1.0 / max(self.active[t]["count"], 1) for t in names])
        scales = np.array([self.active[t]["scale"] for t in names])
        priors = {spec.prior_key(t): self.active[t]["prior"] for t in names}
        at_state, previous = None, None
        alphas = [L.softmax(at).tolist()]
        ce: dict[str, list] = {t: [] for t in names}
        for step in range(steps):
            base = {**self._request_config(names), spec.ALPHA_TILDE: at.copy()}
            fits = ([cold] * p.warmup_phi if step == 0 and cold else []) + [names] * p.n_phi
            for fit_names in fits:
                replies = self._send(
                    grid,
                    spec.COMBINE,
                    spec.pack_classifiers([params[t] for t in fit_names], self._layouts(fit_names)),
                    {**base, spec.MODE: spec.MODE_FIT, spec.FIT_ATTRS: ",".join(fit_names)},
                    traffic,
                )
                self._fit_step(replies, fit_names, params, states, ce)
            c = L.balance_weights(scales, p.combine_balance, p.combine_temperature, previous)
            replies = self._send(
                grid,
                spec.COMBINE,
                spec.pack_classifiers([params[t] for t in names], self._layouts(names)),
                {**base, spec.MODE: spec.MODE_GRAD, spec.WEIGHTS: c * inv, **priors},
                traffic,
            )
            g = np.sum([r.metrics[spec.G_ALPHA] for r in replies], axis=0)
            means = np.sum([r.metrics[spec.MI] for r in replies], axis=0) * inv
            previous = means / scales
            hist["alpha"].append(alphas[-1])
            hist["mi"].append(means.tolist())
            hist["weights"].append(c.tolist())
            hist["objective"].append(
                L.balanced_objective(means, scales, p.combine_balance, p.combine_temperature)
            )
            (at,), at_state = adam_step([at], [g], at_state, p.combine_lr)
            hist["steps"] += 1
            alphas.append(L.softmax(at).tolist())
            if L.alpha_converged(alphas, p.combine_tol, p.combine_window):
                break
        if hist["steps"]:
            self.combination = {
                "names": names,
                "alpha_tilde": at.copy(),
                "params": params,
                "states": states,
            }
        return at, hist

    # ------------------------------------------------------------------ requests
    def _evaluate_now(self, grid, server_round: int) -> Any:
        replies = self.communicate(
            grid,
            "evaluate",
            self.client_ids,
            server_round,
            self._Q,
            self.evaluate_config(server_round),
        )
        return self.evaluation_metrics(replies)

    def _request(self, grid, server_round: int, op: str, attrs: list[str]) -> dict[str, Any]:
        cal, comb = Traffic(server_round), Traffic(server_round)
        t0 = time.perf_counter()
        cal_hist: dict[str, Any] = {}
        if op == "withdraw":
            for t in attrs:
                del self.active[t]
        else:
            cal_hist = self._calibrate(grid, attrs, cal)
        t1 = time.perf_counter()
        at, comb_hist = self._combine(grid, comb)
        names = list(self.active)
        self._send(
            grid,
            spec.APPLY,
            None,
            {**self._request_config(names), spec.ALPHA_TILDE: at.copy()},
            comb,
        )
        t2 = time.perf_counter()
        fm = self._evaluate_now(grid, server_round)
        alpha = L.softmax(at) if names else np.zeros(0)
        entry = {
            "op": op,
            "attributes": attrs,
            "active": names,
            "alpha": {t: float(a) for t, a in zip(names, alpha)},
            "alpha_tilde": at.tolist(),
            "calibrations_run": [] if op == "withdraw" else list(attrs),
            "num_calibrations": 0 if op == "withdraw" else len(attrs),
            "calibration_steps": {t: len(h["mi"]) for t, h in cal_hist.items()},
            "combine_steps": comb_hist["steps"],
            "warm": comb_hist["warm"],
            "calibrate_s": t1 - t0,
            "combine_s": t2 - t1,
            "total_s": t2 - t0,
            "messages": {"calibrate": cal.messages, "combine": comb.messages},
            "upload_bytes": {"calibrate": cal.upload_bytes, "combine": comb.upload_bytes},
            "metrics": _metrics(fm),
            "history": {"calibrate": cal_hist, "combine": comb_hist},
        }
        self._last_eval = fm
        log.info(
            "lego: %s %s -> active %s, alpha %s, %.1f s (Step 1 %.1f s, Step 2 %.1f s), "
            "NDCG@10 %.4f",
            op,
            ",".join(attrs),
            ",".join(names) or "-",
            json.dumps({t: round(a, 3) for t, a in entry["alpha"].items()}),
            entry["total_s"],
            entry["calibrate_s"],
            entry["combine_s"],
            entry["metrics"].get("ndcg@10", float("nan")),
        )
        return entry

    def after_evaluate(self, server_round: int, record, grid) -> None:
        if server_round != self.total_rounds():
            return
        if self._Q is None:
            raise FedrecError("lego: no item table to evaluate with (no round aggregated)")
        if self.params.release_embeddings:
            self.release(grid, server_round)
            self.released_original = self.released
        requests = [self._request(grid, server_round, op, attrs) for op, attrs in self.plan]
        if self.params.release_embeddings:
            self.release(grid, server_round)
        p = self.params
        self.lego_log = {
            "seed": self.seed,
            "eps": p.eps,
            "eps_relative": True,
            "calibrate_options": {
                "steps": p.steps,
                "n_phi": p.n_phi,
                "warmup_phi": p.warmup_phi,
                "lr_phi": p.lr_phi,
                "lr_emb": p.lr_emb,
                "lr_relative": True,
                "hidden": p.hidden,
                "patience": p.calibrate_patience,
                "plateau_tol": p.calibrate_tol,
            },
            "combine_options": {
                "steps": p.combine_steps,
                "lr": p.combine_lr,
                "n_phi": p.n_phi,
                "warmup_phi": p.warmup_phi,
                "lr_phi": p.lr_phi,
                "hidden": p.hidden,
                "balance": p.combine_balance,
                "temperature": p.combine_temperature,
                "tol": p.combine_tol,
                "window": p.combine_window,
                "warm_steps": p.warm_combine_steps,
            },
            "consent_fraction": p.consent_fraction,
            "consenting_users": {t: v["count"] for t, v in self.active.items()},
            "total_calibrations": sum(r["num_calibrations"] for r in requests),
            "before": _metrics(record.evaluation),
            "requests": requests,
        }
        record.extra["lego"] = {k: v for k, v in self.lego_log.items() if k != "requests"}
        record.extra["lego"]["requests"] = [
            {k: v for k, v in r.items() if k != "history"} for r in requests
        ]
        if self._last_eval is not None:
            record.evaluation = self._last_eval

    def write_outputs(self, out_dir) -> None:
        super().write_outputs(out_dir)
        if self.released_original:
            np.savez(
                out_dir / "embeddings_original.npz", allow_pickle=True, **self.released_original
            )
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
