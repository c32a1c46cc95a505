"""Adversarial client halves: the attacker role of a client, chosen per client id.

An attack run (config ``attack.kind`` other than ``none``) uses the same ClientApp for every
client. :func:`route` splits the clients a node hosts into honest ones, which run the
strategy's own client half unchanged, and the malicious ones of the threat model
(:func:`fedrec.attacks.threat.resolve`: ``attack.fraction`` or ``attack.client-ids``), which run
an :class:`Adversary` wrapped around that same half. An adversary that fails costs only its own
reply: its replies travel in a record of their own, and an exception inside it is logged and
leaves the other clients' replies intact.

Roles (``attack.kind``):

* ``random`` / ``popular`` / ``substitution`` / ``creat``: **profile pollution**. From round
  ``attack.start-round`` on, the client trains on its own profile with at most ``attack.budget``
  positions rewritten to the target item (:mod:`fedrec.attacks.pollution`,
  :mod:`fedrec.attacks.creat`). ``substitution`` and ``creat`` are white-box: the surrogate is
  the global model the train message carries. CREAT's masker is trained by the coalition (every
  malicious client's profile, the paper's group-shared replay across the colluding clients) in
  the round the pollution is (re)computed, once (``attack.refresh = 0``) or every ``refresh``
  rounds. The polluted profiles are kept in the client's own state (they never leave it).
* ``gradient``: **model poisoning** of the item rows (FedRecAttack-style): the honest upload with
  the target's row replaced by a crafted one (:func:`fedrec.attacks.pollution.craft_target_row`)
  of ``attack.boost`` times the client's median honest row norm. Knowledge: the client's own
  profiles and a public share ``attack.params.public`` (default 0.05) of all users' profiles.
  Needs a strategy with sparse item-row uploads (``fedsasrec``, ``fedgru4rec``).
* ``malformed``: a broken reply, ``attack.params.mode`` = nan, shape, ids, count, oversize or
  raise: what the server's reply checks must survive.

``attack.inference-victims`` adds pollution at inference: the evaluation input of that share of
the benign users is polluted with the same attack before their (honest) client half ranks.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from fedrec import protocol
from fedrec.attacks.threat import Threat, pollute_view, resolve
from fedrec.errors import ConfigError

log = logging.getLogger(__name__)

POLLUTION_KINDS = ("random", "popular", "substitution", "creat")
KINDS = (*POLLUTION_KINDS, "gradient", "malformed")
MALFORMED_MODES = ("nan", "shape", "ids", "count", "oversize", "raise")


def _clean_data(cfg):
    from fedrec.recsys.data import user_data

    return user_data(cfg.dataset.name, cfg.dataset.options, cfg.dataset.split)


def _users_per_client(cfg, half_cls) -> int:
    params = getattr(half_cls, "params", None)
    if params is None:
        return 1
    return int(getattr(params(cfg), "users_per_client", 1))


_THREATS: dict[tuple[str, type], Threat] = {}


def threat_for(cfg, half_cls) -> Threat:
    """The run's resolved threat model (cached per config and client half)."""
    key = (cfg.to_json(), half_cls)
    if key not in _THREATS:
        _, ud = _clean_data(cfg)
        upc = _users_per_client(cfg, half_cls)
        _THREATS.clear()
        _THREATS[key] = resolve(cfg.attack, cfg.seed, cfg.partition.num_clients, ud, upc)
    return _THREATS[key]


def adversary_class(kind: str) -> type[Adversary]:
    """The adversarial half of ``attack.kind`` (a built-in name or ``module:Class``)."""
    if kind in _BUILTIN:
        return _BUILTIN[kind]
    if ":" in kind:
        from fedrec.plugins import import_object

        cls = import_object(kind)
        if not (isinstance(cls, type) and issubclass(cls, Adversary)):
            raise ConfigError(f"config key 'attack.kind': {kind} is not an Adversary subclass")
        return cls
    raise ConfigError(
        f"config key 'attack.kind': {kind!r} is not allowed; allowed values: none, "
        f"{', '.join(KINDS)}, or module:Class of an Adversary"
    )


def _as_dict(results) -> dict[int, tuple[Any, dict[str, Any]]]:
    if isinstance(results, protocol.ReplyColumns):
        return results.as_dict()
    return dict(results)


def route(cfg, half_cls, mtype, rnd, weights, config, store, clients):
    """``(honest results, adversarial replies by client, state changed)`` for one message."""
    from fedrec.clients.app import run_half

    threat = threat_for(cfg, half_cls)
    bad = [c for c in clients if threat.is_attacker(c)]
    good = [c for c in clients if c not in set(bad)]
    adv = adversary_class(cfg.attack.kind)(cfg, half_cls, threat)
    committed = False
    results: Any = {}
    if good:
        states = store.cohort(good)
        if mtype == "evaluate" and threat.victims.size:
            results = adv.evaluate_victims(rnd, weights, config, states, good)
        else:
            results = run_half(cfg, half_cls, mtype, rnd, weights, config, states, good)
        committed |= states.commit()
    adversarial: dict[int, Any] = {}
    if bad:
        states = store.cohort(bad)
        try:
            adversarial = _as_dict(adv.handle(mtype, rnd, weights, config, states, bad))
            committed |= states.commit()
        except Exception as exc:  # noqa: BLE001 - a failing adversary loses only its own replies
            log.warning("adversarial clients %s: %s failed (%s)", bad[:10], mtype, exc)
    return results, adversarial, committed


class Adversary:
    """An adversarial client half wrapped around the strategy's honest half ``honest``.

    :meth:`handle` answers every message the honest way except ``train`` from round
    ``attack.start-round`` on, which :meth:`train` answers. Subclasses override :meth:`train`
    (and :meth:`pollute` to also pollute victims at inference).
    """

    def __init__(self, cfg, honest: type, threat: Threat):
        self.cfg, self.honest, self.threat = cfg, honest, threat
        self.params = dict(cfg.attack_params)  # attack.params.*

    def run_honest(self, mtype, rnd, weights, config, states, clients):
        from fedrec.clients.app import run_half

        return run_half(self.cfg, self.honest, mtype, rnd, weights, config, states, clients)

    def handle(self, mtype, rnd, weights, config, states, clients):
        if mtype == "train" and rnd >= self.cfg.attack.start_round:
            return self.train(rnd, weights, config, states, clients)
        return self.run_honest(mtype, rnd, weights, config, states, clients)

    def train(self, rnd, weights, config, states, clients):
        return self.run_honest("train", rnd, weights, config, states, clients)

    # ------------------------------------------------------------------ helpers
    def users_of(self, client_id: int) -> np.ndarray:
        from fedrec.recsys.data import client_users

        _, ud = _clean_data(self.cfg)
        return client_users(client_id, _users_per_client(self.cfg, self.honest), ud.num_users)

    def surrogate(self, weights):
        """The white-box surrogate: the honest half's model with the global weights."""
        model_fn = getattr(self.honest, "model", None)
        if model_fn is None:
            raise ConfigError(
                f"config key 'attack.kind': {self.cfg.attack.kind} needs a sequential "
                "recommender (fedsasrec, fedgru4rec)"
            )
        _, ud = _clean_data(self.cfg)
        m = model_fn(self.cfg, self.honest.params(self.cfg), ud.num_items, weights)
        m.eval()
        return m

    def target_of(self, j: int) -> int:
        t = self.threat.targets
        return int(t[j % t.size])

    def pollute(self, weights, seqs: list[np.ndarray], users: np.ndarray, rnd: int):
        """Polluted copies of ``seqs`` (the profiles of ``users``); none by default."""
        return seqs

    def evaluate_victims(self, rnd, weights, config, states, clients):
        """Honest evaluation, with the victims' input sequences polluted (:meth:`pollute`)."""
        from fedrec.recsys.data import overlay

        _, ud = _clean_data(self.cfg)
        owned = np.concatenate([self.users_of(c) for c in clients])
        vs = np.intersect1d(owned, self.threat.victims)
        if not vs.size:
            return self.run_honest("evaluate", rnd, weights, config, states, clients)
        seqs = [np.asarray(ud.train_seq[u]) for u in vs]
        new = self.pollute(weights, seqs, vs, rnd)
        view = pollute_view(ud, dict(zip(vs.tolist(), new)), update_train=False)
        with overlay(view):
            return self.run_honest("evaluate", rnd, weights, config, states, clients)


class Pollution(Adversary):
    """Profile pollution: train on the own profiles with at most K positions set to the target.

    The polluted profiles are computed once per refresh period (in the first round of the
    period the client trains in) and kept in the client's state (``adv-seq``, ``adv-len``,
    ``adv-round``).
    """

    def period(self, rnd: int) -> int:
        a = self.cfg.attack
        return 0 if a.refresh == 0 else (rnd - a.start_round) // a.refresh

    def train(self, rnd, weights, config, states, clients):
        from fedrec.recsys.data import overlay

        _, ud = _clean_data(self.cfg)
        per = self.period(rnd)
        stale = [c for c in clients if int(states[c].get("adv-period", [-1])[0]) != per]
        if stale:
            users = np.concatenate([self.users_of(c) for c in stale])
            new = self.pollute(weights, [np.asarray(ud.train_seq[u]) for u in users], users, rnd)
            at = 0
            for c in stale:
                k = len(self.users_of(c))
                part = new[at : at + k]
                at += k
                state = dict(states.load(c))
                state["adv-seq"] = np.concatenate(part).astype(np.int64)
                state["adv-len"] = np.asarray([len(s) for s in part], dtype=np.int64)
                state["adv-period"] = np.asarray([per], dtype=np.int64)
                states.save(c, state)
        polluted: dict[int, np.ndarray] = {}
        for c in clients:
            seq, lens = np.asarray(states[c]["adv-seq"]), np.asarray(states[c]["adv-len"])
            for u, s in zip(self.users_of(c), np.split(seq, np.cumsum(lens)[:-1])):
                polluted[int(u)] = s
        view = pollute_view(ud, polluted, update_train=True)
        with overlay(view):
            return self.run_honest("train", rnd, weights, config, states, clients)

    def _by_target(self, seqs, users, fn):
        """Apply ``fn(seqs_subset, target)`` per target (user ``j`` gets target ``j mod T``)."""
        out: list[Any] = [None] * len(seqs)
        T = self.threat.targets.size
        for i in range(T):
            idx = [j for j in range(len(seqs)) if j % T == i]
            if idx:
                for j, s in zip(idx, fn([seqs[j] for j in idx], self.target_of(i))):
                    out[j] = s
        return out

    @property
    def K(self) -> int:
        return int(self.cfg.attack.budget)

    def window(self) -> int:
        params = getattr(self.honest, "params", None)
        return int(getattr(params(self.cfg), "max_len", 50)) if params else 50


class RandomPollution(Pollution):
    def pollute(self, weights, seqs, users, rnd):
        from fedrec.attacks.pollution import random_pollution
        from fedrec.seeding import derive_seed

        def fn(ss, t):
            rng = np.random.default_rng(derive_seed(self.cfg.seed, "adv-random", rnd, t))
            return random_pollution(ss, t, self.K, self.window(), rng)

        return self._by_target(seqs, users, fn)


class PopularPollution(Pollution):
    def pollute(self, weights, seqs, users, rnd):
        from fedrec.attacks.pollution import popular_pollution

        _, ud = _clean_data(self.cfg)
        counts = ud.item_counts()
        return self._by_target(
            seqs, users, lambda ss, t: popular_pollution(ss, t, self.K, self.window(), counts)
        )


class SubstitutionPollution(Pollution):
    def pollute(self, weights, seqs, users, rnd):
        from fedrec.attacks.pollution import substitution_pollution

        model = self.surrogate(weights)
        return self._by_target(
            seqs, users, lambda ss, t: substitution_pollution(model, ss, t, self.K)
        )


class CreatPollution(Pollution):
    """CREAT (:mod:`fedrec.attacks.creat`): the coalition trains the masker on all malicious
    profiles against the round's global model (cached per node, keyed by config and round, so
    every node that hosts attackers computes the same masker), then pollutes with it."""

    _maskers: dict = {}

    def creat_params(self):
        from fedrec.attacks.creat import CreatParams
        from fedrec.config import validate_dataclass

        values = {k: v for k, v in self.params.items() if k not in ("public", "mode")}
        p = validate_dataclass(CreatParams, values, "attack.params.")
        return p

    def pollute(self, weights, seqs, users, rnd):
        import dataclasses

        from fedrec.attacks import creat

        model = self.surrogate(weights)
        p = dataclasses.replace(self.creat_params(), K=self.K)
        _, ud = _clean_data(self.cfg)
        key = (self.cfg.to_json(), rnd)
        if key not in self._maskers:
            self._maskers.clear()
            coalition = [np.asarray(ud.train_seq[u]) for u in self.threat.attacker_users]
            maskers = {}
            for i, t in enumerate(self.threat.targets.tolist()):
                mine = [s for j, s in enumerate(coalition) if j % self.threat.targets.size == i]
                masker, _hist = creat.train_masker(model, mine, int(t), p)
                maskers[int(t)] = masker
            self._maskers[key] = maskers
        maskers = self._maskers[key]
        return self._by_target(
            seqs, users, lambda ss, t: creat.pollute(model, maskers[t], ss, t, self.K)
        )


class GradientPoisoning(Adversary):
    """FedRecAttack-style crafted target rows (module docstring)."""

    def train(self, rnd, weights, config, states, clients):
        from fedrec.attacks.pollution import craft_target_row, sequence_representations
        from fedrec.seeding import derive_seed
        from fedrec.specs import fedsasrec as sspec

        honest = _as_dict(self.run_honest("train", rnd, weights, config, states, clients))
        model = self.surrogate(weights)
        _, ud = _clean_data(self.cfg)
        share = float(self.params.get("public", 0.05))
        if not 0.0 <= share <= 1.0:
            raise ConfigError(f"config key 'attack.params.public': {share} must be in [0, 1]")
        rng = np.random.default_rng(derive_seed(self.cfg.seed, "adv-public"))
        public = rng.choice(ud.num_users, size=int(round(share * ud.num_users)), replace=False)
        out = {}
        for c in clients:
            arrays, metrics = honest[c]
            if arrays is None or len(arrays) != 3:
                raise ConfigError(
                    "attack.kind = gradient needs sparse item-row uploads (fedsasrec, fedgru4rec)"
                )
            ids, item_sum, dense = sspec.unpack_train(arrays)
            known = np.union1d(self.users_of(c), public)
            H = sequence_representations(model, [np.asarray(ud.train_seq[u]) for u in known])
            table = model.item_emb.weight[1:]
            norms = np.linalg.norm(np.asarray(item_sum, dtype=np.float64), axis=1)
            scale = float(np.median(norms)) if norms.size else 1.0
            ids, item_sum = np.asarray(ids), np.asarray(item_sum, dtype=np.float32)
            for t in self.threat.targets.tolist():
                row = craft_target_row(H, table, int(t)) * scale * self.cfg.attack.boost
                if t in ids:
                    item_sum[np.searchsorted(ids, t)] = row
                else:
                    at = int(np.searchsorted(ids, t))
                    ids = np.insert(ids, at, t)
                    item_sum = np.insert(item_sum, at, row.astype(np.float32), axis=0)
            out[c] = (sspec.pack_train(ids, item_sum, dense), metrics)
        return out


class Malformed(Adversary):
    """A client that sends broken replies (``attack.params.mode``, module docstring)."""

    def train(self, rnd, weights, config, states, clients):
        mode = str(self.params.get("mode", "nan"))
        if mode not in MALFORMED_MODES:
            raise ConfigError(
                f"config key 'attack.params.mode': {mode!r} is not allowed; allowed values: "
                f"{', '.join(MALFORMED_MODES)}"
            )
        if mode == "raise":
            raise RuntimeError("malformed adversary: deliberate failure")
        honest = _as_dict(self.run_honest("train", rnd, weights, config, states, clients))
        out = {}
        for c in clients:
            arrays, metrics = honest[c]
            arrays = [np.array(a, copy=True) for a in (arrays or [])]
            metrics = dict(metrics)
            if mode == "nan":
                for a in arrays:
                    if a.dtype.kind == "f" and a.size:
                        a.reshape(-1)[0] = np.nan
            elif mode == "shape":
                arrays = arrays[:-1] + [np.zeros(3, dtype=np.float32)]
            elif mode == "ids":
                for a in arrays:
                    if a.dtype.kind in "iu" and a.size:
                        a.reshape(-1)[0] = 10**9
            elif mode == "count":
                metrics["num-examples"] = -7
            elif mode == "oversize":
                mb = self.cfg.runtime.max_reply_mb
                arrays = arrays + [np.zeros(int((mb + 1) * 2**20 / 4), dtype=np.float32)]
            out[c] = (arrays, metrics)
        return out


_BUILTIN: dict[str, type[Adversary]] = {
    "random": RandomPollution,
    "popular": PopularPollution,
    "substitution": SubstitutionPollution,
    "creat": CreatPollution,
    "gradient": GradientPoisoning,
    "malformed": Malformed,
}
