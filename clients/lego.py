"""Client half of ``lego`` (federated LEGO attribute unlearning on top of ``fedmf``).

:class:`LegoClient` is :class:`~fedrec.clients.recsys.MFClient` (FedMF-BPR training,
ranking evaluation, the opt-in embedding release) plus four query actions that run
the LEGO maths of :mod:`fedrec.algorithms.lego` on the client's **own** rows. The
server half and the phase sequence are described in :mod:`fedrec.strategies.lego`.

Private state (Flower ``context.state``, never sent)
----------------------------------------------------
- ``P`` (FedMF): the user embeddings the recommender uses; LEGO overwrites it with
  ``U(alpha)`` after every request (float32, the model's dtype).
- ``lego`` (float64, ``(n_c, d + S * (3d + 1))``): column block 0 is ``U0``, the
  backup of ``P`` taken at the first LEGO message (every request restarts from it);
  then ``S`` *slots* of ``[U_t | m | v | t]``: a calibration ``U_t`` of one attribute and
  its per-user Adam state (:class:`~fedrec.algorithms.lego.EmbAdamState`: ``m, v`` and
  the step counter). The server assigns an attribute to a free slot when it starts
  calibrating it and names the slots in every message (``slots`` next to ``attrs``);
  a withdrawn attribute's slot is free for the next one. One array, not one per
  attribute, because the ClientApp (de)serialises every state array of every client
  on every message and that per-array cost dominates a LEGO message with many
  clients per node.

Everything a client needs besides that is public: the run config (eps, learning rates),
the broadcast classifier parameters, priors, ``alpha_tilde`` and weights. Each user's
attribute labels are read from ``ds.user_attrs`` for the client's **own** users only
(its private profile in the simulation), and so is its consent
(:func:`consent_mask`, one seeded draw per user).

What leaves a client, per action (exactly; see also the strategy docstring)
-------------------------------------------------------------------------
- ``query.lego_prior``: per requested attribute the one-hot label counts of its
  **consenting** users (zeros when none consents) and their number.
- ``query.lego_calibrate``: per attribute the classifier gradient sums over its
  consenting users (one flat float64 array ``[dW1, db1, dW2, db2]`` per attribute,
  concatenated; no array at all when no user consents), their count, loss sum and,
  after an embedding step, the sum of the consenting users' vCLUB terms.
- ``query.lego_combine``: as above on ``U(alpha)`` (``mode = "fit"``), or the sums of
  ``dJ / d alpha_tilde`` and of the vCLUB terms over consenting users
  (``mode = "grad"``).
- ``query.lego_apply``: nothing (an empty metrics record).

Non-consenting users contribute exact zeros to all of these: they calibrate locally
with their own label, which reveals nothing. See the strategy docstring for what the
sums of *consenting* users reveal without secure aggregation.

Vectorisation and cohort invariance
-----------------------------------
A node hosting many clients processes them in one call (:meth:`handle_cohort`). The
clients are grouped by their number of users ``n`` (all of them when
``users-per-client`` divides the users), stacked as ``(C, n, d)`` arrays, and every
formula of the pure module is evaluated on the stack with batched ``matmul`` (numpy
runs one BLAS call per ``(n, d)`` slice, so a client's numbers do not depend on which
other clients share the node; a flat ``(C * n, d)`` product would not guarantee that,
BLAS kernels depend on the row count). Per-client sums are reductions over the
``n`` axis of the client's own slice, and products with a vector over the stack
(``Z @ prior``, ``g_alpha @ alpha``) are written as elementwise products and sums (a
BLAS matrix-vector product over ``C`` rows changed the last bit with ``C``). Hence a
cohort on one node and one node per client give bit-identical replies (tested). The batched formulas are transcriptions of
:func:`~fedrec.algorithms.lego.classifier_grad_sums`,
:func:`~fedrec.algorithms.lego.calibration_step`, :func:`~fedrec.algorithms.lego.mix`
and :func:`~fedrec.algorithms.lego.combine_grad`; they agree with them to rounding
(the masked-out rows are zeroed instead of dropped, ``mix`` sums the calibrations in
order instead of calling ``tensordot``), which the tests check.
"""

from __future__ import annotations

import functools

import numpy as np

from fedrec.algorithms import lego as L
from fedrec.clients.recsys import MFClient, cfg_user_data, client_users
from fedrec.seeding import derive_seed

STATE_KEY = "lego"
_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8
_TINY = np.finfo(np.float64).tiny
ACTIONS = ("lego_prior", "lego_calibrate", "lego_combine", "lego_apply")


def consent_mask(seed: int, users, fraction: float) -> np.ndarray:
    """Which users let their label train the shared estimators (bool, one per user).

    User ``u`` consents iff a uniform draw from ``derive_seed(seed, "lego-consent", u)``
    is ``< fraction``: each user decides alone (no global list), ``fraction = 1`` means
    everyone. The same rule is used by the tests to build the pure drivers' mask.
    """
    users = np.asarray(users, dtype=np.int64)
    if fraction >= 1.0:
        return np.ones(len(users), dtype=bool)
    return np.array([_user_draw(int(seed), int(u)) < fraction for u in users], dtype=bool)


@functools.lru_cache(maxsize=None)
def _user_draw(seed: int, user: int) -> float:
    return float(np.random.default_rng(derive_seed(seed, "lego-consent", user)).random())


def num_params(d: int, hidden: int, K: int) -> int:
    """Length of one flattened classifier ``[W1 (h,d), b1, W2 (K,h), b2]``."""
    return hidden * d + hidden + K * hidden + K


def split_params(flat: list[np.ndarray], attrs: list[str]) -> list[list[np.ndarray]]:
    """Cut the broadcast list of arrays into one float64 ``[W1, b1, W2, b2]`` per attribute."""
    if len(flat) != 4 * len(attrs):
        raise ValueError(f"expected 4 classifier arrays per attribute {attrs}, got {len(flat)}")
    out, i = [], 0
    for _ in attrs:
        out.append([np.asarray(a, dtype=np.float64) for a in flat[i:i + 4]])
        i += 4
    return out


# ------------------------------------------------------------------ batched maths
# X: (C, n, d) stacks of C clients with n users each; y: (C, n) ints; m: (C, n) bool.
def _forward(p64, X):
    W1, b1, W2, b2 = p64
    pre = np.matmul(X, W1.T) + b1
    hid = np.maximum(pre, 0.0)
    return pre, hid, np.matmul(hid, W2.T) + b2


def _log_softmax(Z):
    Z = Z - Z.max(axis=-1, keepdims=True)
    return Z - np.log(np.exp(Z).sum(axis=-1, keepdims=True))


def grad_sums(p64, X, y, m):
    """Per-client :func:`~fedrec.algorithms.lego.classifier_grad_sums`.

    Returns ``(flat (C, P) float64, count (C,), loss_sum (C,))``; masked-out users
    contribute exact zeros.
    """
    W1, _, W2, _ = p64
    pre, hid, Z = _forward(p64, X)
    logq = _log_softmax(Z)
    yy = y[..., None]
    ly = np.take_along_axis(logq, yy, -1)[..., 0]
    mf = m.astype(np.float64)
    loss = -(ly * mf).sum(-1)
    dZ = np.exp(logq)
    np.put_along_axis(dZ, yy, np.take_along_axis(dZ, yy, -1) - 1.0, -1)
    dZ = dZ * mf[..., None]
    dpre = np.matmul(dZ, W2) * (pre > 0)
    C = X.shape[0]
    parts = [np.matmul(np.swapaxes(dpre, -1, -2), X), dpre.sum(-2),
             np.matmul(np.swapaxes(dZ, -1, -2), hid), dZ.sum(-2)]
    flat = np.concatenate([g.reshape(C, -1) for g in parts], axis=1)
    return flat, m.sum(-1).astype(np.int64), loss


def _terms_and_input_grad(p64, X, y, prior):
    """Batched ``_terms_and_input_grad``: vCLUB prior-form terms (C, n), d/dX (C, n, d)."""
    W1, _, W2, _ = p64
    pre, _, Z = _forward(p64, X)
    yy = y[..., None]
    terms = np.take_along_axis(Z, yy, -1)[..., 0] - (Z * prior).sum(-1)
    dZ = -np.broadcast_to(prior, Z.shape).copy()
    np.put_along_axis(dZ, yy, np.take_along_axis(dZ, yy, -1) + 1.0, -1)
    return terms, np.matmul(np.matmul(dZ, W2) * (pre > 0), W1)


def _project(U, U0, r):
    delta = U - U0
    norm = np.linalg.norm(delta, axis=-1)
    scale = np.where(norm > r, r / np.maximum(norm, _TINY), 1.0)
    return U0 + delta * scale[..., None]


def calibration_step(p64, U, U0, y, prior, lr, eps, m_state, v_state, t_state, mask):
    """Batched :func:`~fedrec.algorithms.lego.calibration_step` (per-user Adam + projection).

    ``lr``, ``eps``: (C, n) absolute per-row values. Returns ``(U, m, v, t, mi_sums (C,))``.
    """
    terms, g = _terms_and_input_grad(p64, U, y, prior)
    mi = (terms * mask).sum(-1)
    b1, b2 = _BETAS
    t = t_state + 1.0
    m1 = b1 * m_state + (1.0 - b1) * g
    v1 = b2 * v_state + (1.0 - b2) * g * g
    bc1, bc2 = 1.0 - b1 ** t, 1.0 - b2 ** t
    upd = (lr / bc1)[..., None] * m1 / (np.sqrt(v1) / np.sqrt(bc2)[..., None] + _ADAM_EPS)
    return _project(U - upd, U0, eps), m1, v1, t, mi


def mix(alpha_tilde, S):
    """``U(alpha)`` of stacked calibrations ``S`` (k, ...): summed in attribute order."""
    alpha = L.softmax(alpha_tilde)
    out = alpha[0] * S[0]
    for a, s in zip(alpha[1:], S[1:]):
        out = out + a * s
    return out


def combine_grads(alpha_tilde, S, params, ys, priors, mask, weights):
    """Per-client :func:`~fedrec.algorithms.lego.combine_grad`: ``(g (C, k), mi (C, k))``."""
    alpha = L.softmax(alpha_tilde)
    Ua = mix(alpha_tilde, S)
    G = np.zeros_like(Ua)
    mi = []
    for t in range(len(S)):
        terms, gx = _terms_and_input_grad(params[t], Ua, ys[t], priors[t])
        mi.append((terms * mask).sum(-1))
        G = G + weights[t] * (gx * mask[..., None])
    g_alpha = np.stack([(G * s).sum(-1).sum(-1) for s in S], axis=1)   # (C, k)
    g = alpha * (g_alpha - (g_alpha * alpha).sum(-1, keepdims=True))
    return g, np.stack(mi, axis=1)


# ------------------------------------------------------------------ client half
class LegoClient(MFClient):
    """FedMF-BPR client plus the LEGO query actions (see the module docstring)."""

    @classmethod
    def handle_cohort(cls, cfg, message_type, server_round, weights, config, states):
        action = message_type[len("query."):] if message_type.startswith("query.") else ""
        if action not in ACTIONS:
            return super().handle_cohort(cfg, message_type, server_round, weights, config,
                                         states)
        p = cls.params(cfg)
        ds, ud = cfg_user_data(cfg)
        cls._users_and_P(cfg, p, ud, states)      # (creates P if a client never trained)
        cids = sorted(states)
        users = {c: client_users(c, p.users_per_client, ud.num_users) for c in cids}
        for c in cids:
            if STATE_KEY not in states[c]:
                states[c][STATE_KEY] = np.asarray(states[c][cls.P], dtype=np.float64).copy()
        groups: dict[int, list[int]] = {}
        for c in cids:
            groups.setdefault(len(users[c]), []).append(c)
        attrs = [a for a in str(config.get("attrs", "")).split(",") if a]
        slots = [int(x) for x in str(config.get("slots", "")).split(",") if x]
        if len(slots) != len(attrs):
            raise ValueError(f"lego: {len(attrs)} attributes but {len(slots)} slots")
        out: dict = {}
        for group in groups.values():
            g = _Group(cfg, p, ds, group, np.stack([users[c] for c in group]), states)
            out.update(getattr(cls, "_" + action)(g, attrs, slots, weights, config))
            g.save()
        return out

    # -------------------------------------------------------------- actions
    @staticmethod
    def _lego_prior(g: "_Group", attrs, slots, weights, config):
        """Start calibrating ``attrs``: reset their slots to ``U0``, return label counts."""
        counts = []
        for t, s in zip(attrs, slots):
            K = len(g.ds.attr_names[t])
            y = g.labels(t)
            counts.append(np.stack([np.bincount(y[i][g.mask[i]], minlength=K)
                                    for i in range(len(g.clients))]))
            g.reset(s)
        flat = np.concatenate(counts, axis=1) if counts else np.zeros((len(g.clients), 0))
        return {c: (None, {"counts": [int(v) for v in flat[i]],
                           "num-examples": int(g.mask[i].sum())})
                for i, c in enumerate(g.clients)}

    @staticmethod
    def _lego_calibrate(g: "_Group", attrs, slots, weights, config):
        """Optionally one embedding step per attribute (with the broadcast estimators),
        then the estimators' gradient sums on the (new) calibrated rows."""
        p, d = g.p, g.d
        params = split_params(weights, attrs)
        step, fit = bool(config.get("step", False)), bool(config.get("fit", False))
        eps_r = p.eps * np.linalg.norm(g.U0, axis=-1)                      # (C, n)
        lr_r = np.maximum(p.lr_emb * eps_r / np.sqrt(d), _TINY)
        mask = g.mask.astype(np.float64)
        flats, counts, losses, mis = [], [], [], []
        for t, s, p64 in zip(attrs, slots, params):
            y = g.labels(t)
            b = g.base(s)
            X = g.X
            if step:
                prior = np.asarray(config[f"prior.{t}"], dtype=np.float64)
                U, m1, v1, t1, mi = calibration_step(
                    p64, X[..., b:b + d], g.U0, y, prior, lr_r, eps_r, X[..., b + d:b + 2 * d],
                    X[..., b + 2 * d:b + 3 * d], X[..., b + 3 * d], mask)
                X[..., b:b + d], X[..., b + d:b + 2 * d] = U, m1
                X[..., b + 2 * d:b + 3 * d], X[..., b + 3 * d] = v1, t1
                mis.append(mi)
            if fit:
                flat, cnt, loss = grad_sums(p64, X[..., b:b + d], y, g.mask)
                flats.append(flat)
                counts.append(cnt)
                losses.append(loss)
        return g.replies(flats, counts, losses, mis)

    @staticmethod
    def _lego_combine(g: "_Group", attrs, slots, weights, config):
        """Estimators' gradient sums on ``U(alpha)`` (``fit``) or alpha-gradient sums."""
        params = split_params(weights, attrs)
        at = np.asarray(config["alpha-tilde"], dtype=np.float64)
        S = np.stack([g.U(s) for s in slots])
        ys = [g.labels(t) for t in attrs]
        if config.get("mode") == "grad":
            priors = [np.asarray(config[f"prior.{t}"], dtype=np.float64) for t in attrs]
            w = np.asarray(config["weights"], dtype=np.float64)
            ga, mi = combine_grads(at, S, params, ys, priors, g.mask.astype(np.float64), w)
            return {c: (None, {"g-alpha": ga[i].tolist(), "mi": mi[i].tolist(),
                               "count": int(g.mask[i].sum())})
                    for i, c in enumerate(g.clients)}
        Ua = mix(at, S)
        flats, counts, losses = [], [], []
        for p64, y in zip(params, ys):
            flat, cnt, loss = grad_sums(p64, Ua, y, g.mask)
            flats.append(flat)
            counts.append(cnt)
            losses.append(loss)
        return g.replies(flats, counts, losses, [])

    @staticmethod
    def _lego_apply(g: "_Group", attrs, slots, weights, config):
        """Set ``P = U(alpha)`` over the active attributes (``U0`` when none); slots that
        are not named are free (their contents are overwritten when reused)."""
        S = [g.U(s) for s in slots]
        if not S:
            P = g.U0
        elif len(S) == 1:
            P = S[0]
        else:
            P = mix(np.asarray(config["alpha-tilde"], dtype=np.float64), np.stack(S))
        for i, c in enumerate(g.clients):
            g.states[c][MFClient.P] = P[i].astype(np.float32)
        return {c: (None, {}) for c in g.clients}


class _Group:
    """Clients of one node with the same number of users, as ``(C, n, ...)`` stacks of
    their ``lego`` state (``X``) and their users' ids, consent and labels."""

    def __init__(self, cfg, p, ds, clients, users, states):
        self.p, self.ds, self.clients, self.users, self.states = p, ds, clients, users, states
        self.d = int(np.asarray(states[clients[0]][MFClient.P]).shape[-1])
        self.X = np.stack([states[c][STATE_KEY] for c in clients])
        self.mask = consent_mask(cfg.seed, users.ravel(), p.consent_fraction).reshape(users.shape)

    @property
    def U0(self) -> np.ndarray:
        return self.X[..., :self.d]

    def base(self, slot: int) -> int:
        """First column of ``slot``; grows the state when the slot does not exist yet."""
        b = self.d + slot * (3 * self.d + 1)
        if self.X.shape[-1] < b + 3 * self.d + 1:
            pad = b + 3 * self.d + 1 - self.X.shape[-1]
            self.X = np.concatenate([self.X, np.zeros(self.X.shape[:-1] + (pad,))], axis=-1)
        return b

    def U(self, slot: int) -> np.ndarray:
        b = self.base(slot)
        return self.X[..., b:b + self.d]

    def reset(self, slot: int) -> None:
        """A fresh calibration: ``U_t = U0`` and zero Adam state."""
        b = self.base(slot)
        self.X[..., b:b + self.d] = self.U0
        self.X[..., b + self.d:b + 3 * self.d + 1] = 0.0

    def labels(self, attr: str) -> np.ndarray:
        """The attribute labels of the group's own users (their private profiles)."""
        return np.asarray(self.ds.user_attrs[attr], dtype=np.int64)[self.users]

    def save(self) -> None:
        for i, c in enumerate(self.clients):
            self.states[c][STATE_KEY] = np.ascontiguousarray(self.X[i])

    def replies(self, flats, counts, losses, mis):
        out = {}
        for i, c in enumerate(self.clients):
            metrics = {}
            arrays = None
            if flats:
                metrics["count"] = [int(x[i]) for x in counts]
                metrics["loss"] = [float(x[i]) for x in losses]
                metrics["num-examples"] = int(self.mask[i].sum())
                if self.mask[i].any():
                    arrays = [np.concatenate([f[i] for f in flats])]
            if mis:
                metrics["mi"] = [float(x[i]) for x in mis]
            out[c] = (arrays, metrics)
        return out


def state_embeddings(state: np.ndarray, d: int) -> list[np.ndarray]:
    """``U0`` and every slot's calibrated rows of a client's ``lego`` state (for audits)."""
    out = [state[:, :d]]
    for b in range(d, state.shape[1], 3 * d + 1):
        out.append(state[:, b:b + d])
    return out
