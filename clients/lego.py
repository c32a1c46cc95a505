"""Client half of ``lego`` (federated LEGO attribute unlearning on top of ``fedmf``).

:class:`LegoClient` is :class:`~fedrec.clients.fedmf.MFClient` (FedMF-BPR training,
ranking evaluation, the opt-in embedding release) plus four query actions that run the
LEGO maths of :mod:`fedrec.algorithms.lego` on the client's **own** rows. Messages,
keys and array layouts are declared in :mod:`fedrec.specs.lego`; the server half and
the phase sequence are described in :mod:`fedrec.strategies.lego`.

Private state (columns of the node's state, :mod:`fedrec.state`; never sent)
-----------------------------------------------------------------------------
- ``P`` (FedMF): the user embeddings the recommender uses; LEGO overwrites it with
  ``U(alpha)`` after every request (float32, the model's dtype).
- ``lego`` (float64, ``(n_c, d + S * (3d + 1))`` per client): column block 0 is ``U0``,
  the backup of ``P`` taken at the first LEGO message (every request restarts from it);
  then ``S`` *slots* of ``[U_t | m | v | t]``: a calibration ``U_t`` of one attribute and
  its per-user Adam state (:class:`~fedrec.algorithms.lego.EmbAdamState`: ``m, v`` and
  the step counter). The server assigns an attribute to a free slot when it starts
  calibrating it and names the slots in every message (``slots`` next to ``attrs``); a
  withdrawn attribute's slot is free for the next one. One field for all of it: the
  cohort reads and writes it as one column.

Everything a client needs besides that is public: the run config (eps, learning rates),
the broadcast estimators, priors, ``alpha_tilde`` and weights. Each user's attribute
labels are read from ``ds.user_attrs`` for the client's **own** users only (its private
profile in the simulation), and so is its consent (:func:`consent_mask`, one seeded
draw per user).

What leaves a client, per action (exactly)
------------------------------------------
- ``query.lego_prior``: per requested attribute the one-hot label counts of its
  **consenting** users (zeros when none consents) and their number.
- ``query.lego_calibrate``: per attribute the estimators' cross-entropy gradient sums
  over its consenting users (one flat float64 vector ``[dW1, db1, dW2, db2]`` per
  attribute, end to end; an empty vector when no user consents), their count and loss
  sum and, after an embedding step, the sum of the consenting users' vCLUB terms.
- ``query.lego_combine``: as above on ``U(alpha)`` (``mode = "fit"``; only for the
  estimators the message carries, ``fit-attrs``: in the warm-up of a dynamic request,
  only the new attributes'), or the sums of ``dJ / d alpha_tilde`` (with the broadcast
  weights ``c_t / count_t`` of the Step-2 objective) and of the vCLUB terms over
  consenting users and their count (``mode = "grad"``).
- ``query.lego_apply``: nothing.
- Before LEGO, FedMF's traffic (item-row deltas); after each request, FedMF's
  evaluation replies (per-user ranking metrics and top-K lists, a measurement of the
  simulation); in the opt-in audit ``release-embeddings = true`` the embeddings before
  LEGO and after the last request.

Non-consenting users contribute exact zeros to all of these: they calibrate locally
with their own label, which reveals nothing. Never sent: user embeddings (``U0``,
calibrations, ``U(alpha)``), per-user Adam state, attribute labels, interactions.

What the sums reveal: they are sums over a client's consenting users, meant to be added
under secure aggregation (the server needs only the totals); fedrec does not ship secure
aggregation and the simulation adds them in the clear. With one user per client
(``users-per-client = 1``) a consenting user's sums identify it: the counts are the
one-hot label, the output-bias gradient is ``softmax - onehot(a_u)`` and the first
layer's gradient is ``delta (x) e_u`` (row ``i`` of ``dW1`` over ``db1_i`` is the current
calibrated embedding). Consent therefore means "I trust the aggregator"; a deployment
must add secure aggregation or use several users per client (cross-silo).

One call per node
-----------------
:meth:`LegoClient.handle_cohort` reads the cohort's ``lego`` column once, groups the
clients by their number of users ``n`` (one group when ``users-per-client`` divides
the users), runs the pure functions of :mod:`fedrec.algorithms.lego` on each group's
``(C, n, ...)`` stack (they are batch-first and slice-wise, so a client's numbers do not
depend on the other clients of the node) and replies by column
(:class:`fedrec.protocol.ReplyColumns`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from fedrec import protocol
from fedrec.algorithms import lego as L
from fedrec.clients.fedmf import MFClient
from fedrec.recsys.data import cfg_user_data
from fedrec.seeding import derive_seed
from fedrec.specs import lego as spec


def consent_mask(seed: int, users, fraction: float) -> np.ndarray:
    """Which users let their label train the shared estimators (bool, one per user).

    User ``u`` consents iff a uniform draw from ``derive_seed(seed, "lego-consent", u)``
    is ``< fraction``: each user decides alone (no global list), ``fraction = 1`` means
    everyone. The same rule is used by the tests to build the pure drivers' mask.
    """
    users = np.asarray(users, dtype=np.int64)
    if fraction >= 1.0:
        return np.ones(users.shape, dtype=bool)
    return np.array(
        [_user_draw(int(seed), int(u)) < fraction for u in users.ravel()], dtype=bool
    ).reshape(users.shape)


@functools.cache
def _user_draw(seed: int, user: int) -> float:
    return float(np.random.default_rng(derive_seed(seed, "lego-consent", user)).random())


def slot_width(d: int) -> int:
    """Columns of one slot ``[U_t | m | v | t]`` of the ``lego`` state."""
    return 3 * d + 1


def state_embeddings(state: np.ndarray, d: int) -> list[np.ndarray]:
    """``U0`` and every slot's calibrated rows of ``lego`` state rows (for audits)."""
    out = [state[:, :d]]
    for b in range(d, state.shape[1], slot_width(d)):
        out.append(state[:, b : b + d])
    return out


# ------------------------------------------------------------------ one group of clients
class _Group:
    """Clients of one message with the same number of users ``n``: ``(C, n, ...)`` views
    of their ``lego`` state ``X``, their users' consent and the dataset (for labels)."""

    def __init__(self, p, ds, users: np.ndarray, X: np.ndarray, mask: np.ndarray, d: int):
        self.p, self.ds, self.users, self.X, self.mask, self.d = p, ds, users, X, mask, d
        self.P: np.ndarray | None = None  # set by apply: the new (C, n, d) float32 P

    @property
    def U0(self) -> np.ndarray:
        return self.X[..., : self.d]

    def _base(self, slot: int) -> int:
        return self.d + slot * slot_width(self.d)

    def U(self, slot: int) -> np.ndarray:
        b = self._base(slot)
        return self.X[..., b : b + self.d]

    def adam(self, slot: int) -> L.EmbAdamState:
        b, d = self._base(slot), self.d
        return L.EmbAdamState(
            self.X[..., b + d : b + 2 * d],
            self.X[..., b + 2 * d : b + 3 * d],
            self.X[..., b + 3 * d],
        )

    def set(self, slot: int, U: np.ndarray, state: L.EmbAdamState) -> None:
        b, d = self._base(slot), self.d
        self.X[..., b : b + d], self.X[..., b + d : b + 2 * d] = U, state.m
        self.X[..., b + 2 * d : b + 3 * d], self.X[..., b + 3 * d] = state.v, state.t

    def reset(self, slot: int) -> None:
        """A fresh calibration: ``U_t = U0`` and zero Adam state."""
        b = self._base(slot)
        self.X[..., b : b + self.d] = self.U0
        self.X[..., b + self.d : b + slot_width(self.d)] = 0.0

    def labels(self, attr: str) -> np.ndarray:
        """The attribute labels of the group's own users (their private profiles)."""
        return np.asarray(self.ds.user_attrs[attr], dtype=np.int64)[self.users]

    def layouts(self, attrs: list[str]):
        return [
            spec.classifier_layout(self.d, self.p.hidden, len(self.ds.attr_names[t])) for t in attrs
        ]

    def consenting(self) -> np.ndarray:
        return self.mask.sum(axis=-1).astype(np.int64)


# A handler's reply for a group: (arrays (C, L) float64 or None, which clients send them
# (C,) bool, metrics: key -> (C,) scalars or (C, L) per-client vectors).
GroupReply = tuple[np.ndarray | None, np.ndarray | None, dict[str, np.ndarray]]


def _fit_reply(g: _Group, attrs, params, embeddings) -> GroupReply:
    """The estimators' gradient sums on ``embeddings[t]`` (consenting users), per client."""
    grads, counts, losses = [], [], []
    for t, phi, U in zip(attrs, params, embeddings):
        gs, cnt, loss = L.classifier_grad_sums(phi, U, g.labels(t), g.mask)
        grads.append(gs)
        counts.append(cnt)
        losses.append(loss)
    flat = spec.pack_grad_sums(grads, g.layouts(attrs))
    return (
        flat,
        np.asarray(g.mask.any(axis=-1)),
        {
            spec.COUNT: np.stack(counts, axis=-1),
            spec.LOSS: np.stack(losses, axis=-1),
            spec.NUM_EXAMPLES: g.consenting(),
        },
    )


def _prior(g: _Group, attrs, slots, weights, config) -> GroupReply:
    """Start calibrating ``attrs``: reset their slots to ``U0``, reply label counts."""
    counts = [L.label_counts(g.labels(t), len(g.ds.attr_names[t]), g.mask) for t in attrs]
    for s in slots:
        g.reset(s)
    return (
        None,
        None,
        {spec.COUNTS: np.concatenate(counts, axis=-1), spec.NUM_EXAMPLES: g.consenting()},
    )


def _calibrate(g: _Group, attrs, slots, weights, config) -> GroupReply:
    """Optionally one embedding step per attribute (with the broadcast estimators),
    then the estimators' gradient sums on the (new) calibrated rows."""
    params = spec.unpack_classifiers(weights, g.layouts(attrs))
    step, fit = bool(config.get(spec.STEP, False)), bool(config.get(spec.FIT, False))
    eps_r = L.eps_rows(g.U0, g.p.eps)  # (C, n)
    lr_r = L.embedding_lr(eps_r, g.p.lr_emb, g.d)
    metrics: dict[str, np.ndarray] = {}
    if step:
        mis = []
        for t, s, phi in zip(attrs, slots, params):
            U, st, mi = L.calibration_step(
                phi,
                g.U(s),
                g.U0,
                g.labels(t),
                config[spec.prior_key(t)],
                lr_r,
                eps_r,
                opt_state=g.adam(s),
                mask=g.mask,
            )
            g.set(s, U, st)
            mis.append(mi)
        metrics[spec.MI] = np.stack(mis, axis=-1)
    if not fit:
        return None, None, metrics
    flat, send, fit_metrics = _fit_reply(g, attrs, params, [g.U(s) for s in slots])
    return flat, send, {**metrics, **fit_metrics}


def _combine(g: _Group, attrs, slots, weights, config) -> GroupReply:
    """Estimators' gradient sums on ``U(alpha)`` (``fit``: of the attributes named in
    ``fit-attrs``, default all; ``U(alpha)`` mixes every named slot) or alpha-gradient
    sums (``grad``, with the broadcast weights)."""
    at = np.asarray(config[spec.ALPHA_TILDE], dtype=np.float64)
    S = [g.U(s) for s in slots]
    if config.get(spec.MODE) == spec.MODE_GRAD:
        params = spec.unpack_classifiers(weights, g.layouts(attrs))
        ga, mi = L.combine_grad(
            at,
            S,
            params,
            [g.labels(t) for t in attrs],
            [config[spec.prior_key(t)] for t in attrs],
            masks=[g.mask] * len(attrs),
            weights=config[spec.WEIGHTS],
        )
        return None, None, {spec.G_ALPHA: ga, spec.MI: mi, spec.COUNT: g.consenting()}
    fit = [a for a in str(config.get(spec.FIT_ATTRS, ",".join(attrs))).split(",") if a]
    if any(a not in attrs for a in fit):
        raise ValueError(f"lego: fit-attrs {fit} not among the message's attributes {attrs}")
    params = spec.unpack_classifiers(weights, g.layouts(fit))
    Ua = L.mix(at, S)
    return _fit_reply(g, fit, params, [Ua] * len(fit))


def _apply(g: _Group, attrs, slots, weights, config) -> GroupReply:
    """Set ``P = U(alpha)`` over the active attributes (``U0`` when none); slots that
    are not named are free (their contents are overwritten when reused)."""
    S = [g.U(s) for s in slots]
    if not S:
        P = g.U0
    elif len(S) == 1:
        P = S[0]
    else:
        P = L.mix(np.asarray(config[spec.ALPHA_TILDE], dtype=np.float64), S)
    g.P = np.asarray(P, dtype=np.float32)
    return None, None, {}


HANDLERS: dict[str, Callable[..., GroupReply]] = {
    f"query.{spec.PRIOR}": _prior,
    f"query.{spec.CALIBRATE}": _calibrate,
    f"query.{spec.COMBINE}": _combine,
    f"query.{spec.APPLY}": _apply,
}


# ------------------------------------------------------------------ the client half
class LegoClient(MFClient):
    """FedMF-BPR client plus the LEGO query actions (see the module docstring)."""

    Params = spec.FedLegoParams

    @classmethod
    def handle_cohort(cls, cfg, message_type, server_round, weights, config, states):
        handler = HANDLERS.get(message_type)
        if handler is None:
            return super().handle_cohort(cfg, message_type, server_round, weights, config, states)
        p = cls.params(cfg)
        ds, ud = cfg_user_data(cfg)
        users, owner, P = cls._users_and_P(cfg, p, ud, states)  # (creates P if never trained)
        attrs, slots = spec.unpack_request(config)
        cids, sizes = np.unique(owner, return_counts=True)  # owner is sorted
        indptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        d = P.shape[1]
        X = cls._lego_state(states, P, indptr, d + (max(slots, default=-1) + 1) * slot_width(d))
        mask = consent_mask(cfg.seed, users, p.consent_fraction)
        newP = np.empty_like(P) if handler is _apply else None
        parts = []
        for n in np.unique(sizes):
            pos = np.flatnonzero(sizes == n)
            whole = len(pos) == len(sizes)
            rows = slice(None) if whole else (indptr[pos][:, None] + np.arange(n)).ravel()
            g = _Group(
                p,
                ds,
                users[rows].reshape(len(pos), n),
                X[rows].reshape(len(pos), n, X.shape[1]),
                mask[rows].reshape(len(pos), n),
                d,
            )
            parts.append((pos, handler(g, attrs, slots, weights, config)))
            if not whole:  # fancy indexing copied: write back
                X[rows] = g.X.reshape(-1, X.shape[1])
            if newP is not None:
                newP[rows] = g.P.reshape(-1, d)
        states.set_column(spec.STATE, X, indptr)
        if newP is not None:
            states.set_column(spec.P, newP, indptr)
        return _reply_columns(cids, parts)

    @staticmethod
    def _lego_state(states, P: np.ndarray, indptr: np.ndarray, width: int) -> np.ndarray:
        """The cohort's ``lego`` rows (a float64 copy, client order), ``U0 = P`` for a
        cohort at its first LEGO message, widened with zero columns to ``width``."""
        try:
            col = states.column(spec.STATE)
        except KeyError as exc:
            raise ValueError(
                f"lego: every client takes part in every LEGO message; {exc.args[0]}"
            ) from None
        X = np.array(P if col is None else col[0], dtype=np.float64)
        if col is not None and not np.array_equal(col[1], indptr):
            raise ValueError("lego: the state rows do not match the clients' users")
        if X.shape[1] < width:
            X = np.concatenate([X, np.zeros((X.shape[0], width - X.shape[1]))], axis=1)
        return X


def _reply_columns(
    cids: np.ndarray, parts: list[tuple[np.ndarray, GroupReply]]
) -> protocol.ReplyColumns:
    """The groups' replies as one column per field, in client order."""
    order = np.argsort(np.concatenate([pos for pos, _ in parts]), kind="stable")

    def merged(values: list) -> np.ndarray:
        return values[0] if len(values) == 1 else np.concatenate(values)[order]

    C = len(cids)
    arrays = None
    if parts[0][1][0] is not None:
        flat = merged([r[0] for _, r in parts])
        send = merged([r[1] for _, r in parts])
        lengths = np.where(send, flat.shape[1], 0)
        values = flat.reshape(-1) if send.all() else flat[send].reshape(-1)
        arrays = [(values, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))]
    metrics: dict[str, Any] = {}
    for k in parts[0][1][2]:
        v = merged([r[2][k] for _, r in parts])
        if v.ndim == 1:
            metrics[k] = v
        else:
            metrics[k] = (v.reshape(-1), np.arange(C + 1, dtype=np.int64) * v.shape[1])
    return protocol.ReplyColumns(np.asarray(cids, dtype=np.int64), arrays, metrics)
