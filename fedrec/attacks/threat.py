"""Threat models of the attack experiments: who attacks, what is targeted, whose data changes.

Pure functions of the run config's ``attack.*`` values (no flwr import), computed the same way
on the server and on every node, so an attacker is a role chosen per client id:

* :func:`attacker_ids`: the malicious clients, ``attack.client-ids`` or a seeded
  ``attack.fraction`` of all clients (at least one when the fraction is positive);
* :func:`target_items`: ``head`` / ``medium`` / ``tail`` picks one item, seeded, from that third of
  the items with at least one training interaction ranked by training popularity (CREAT's
  Table 3 uses head / medium / tail targets; Table 1's target is a medium one), or explicit ids;
* :func:`victim_users`: the benign users whose evaluation input the attacker also pollutes
  (``attack.inference-victims``: pollution of part of victims' sequences at inference);
* :func:`pollute_view`: a :class:`~fedrec.recsys.splits.UserData` whose training sequences of
  some users are replaced. ``update_train=True`` (a malicious client's own polluted profile) also
  replaces their training item sets, so the new items are positives and never negatives;
  ``False`` (inference-time pollution of a victim) keeps the clean item set, so the items the
  attacker injected are not masked at ranking.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from fedrec.errors import ConfigError
from fedrec.seeding import derive_seed

BANDS = ("head", "medium", "tail")


def attacker_ids(kind: str, fraction: float, client_ids: str, num_clients: int, seed: int):
    """Sorted malicious client ids (int64); empty when ``kind`` is ``none``."""
    if kind == "none" or num_clients <= 0:
        return np.zeros(0, dtype=np.int64)
    if str(client_ids).strip():
        try:
            ids = sorted({int(x) for x in str(client_ids).split(",") if x.strip()})
        except ValueError:
            raise ConfigError(
                f"config key 'attack.client-ids': {client_ids!r} is not a comma-separated list "
                "of client ids"
            ) from None
        bad = [c for c in ids if not 0 <= c < num_clients]
        if bad:
            raise ConfigError(
                f"config key 'attack.client-ids': {bad[:5]} outside [0, {num_clients})"
            )
        return np.asarray(ids, dtype=np.int64)
    if fraction <= 0:
        return np.zeros(0, dtype=np.int64)
    m = max(1, int(round(fraction * num_clients)))
    rng = np.random.default_rng(derive_seed(seed, "attackers"))
    return np.sort(rng.choice(num_clients, size=min(m, num_clients), replace=False)).astype(
        np.int64
    )


def popularity_band(item_counts: np.ndarray, band: str) -> np.ndarray:
    """Items of one popularity third (``head`` = most popular) among items with a training
    interaction, ranked by count (ties by id)."""
    if band not in BANDS:
        raise ConfigError(f"popularity band must be one of: {', '.join(BANDS)} (got {band!r})")
    counts = np.asarray(item_counts)
    seen = np.flatnonzero(counts > 0)
    order = seen[np.lexsort((seen, -counts[seen]))]
    thirds = np.array_split(order, 3)
    return np.sort(thirds[BANDS.index(band)])


def target_items(target: str, item_counts: np.ndarray, seed: int) -> np.ndarray:
    """The target item ids (0-based, int64) that ``attack.target`` names."""
    t = str(target).strip()
    n = len(item_counts)
    if t in BANDS:
        band = popularity_band(item_counts, t)
        if not band.size:
            raise ConfigError("config key 'attack.target': no item has a training interaction")
        rng = np.random.default_rng(derive_seed(seed, "target", t))
        return np.asarray([band[rng.integers(band.size)]], dtype=np.int64)
    try:
        ids = sorted({int(x) for x in t.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(
            f"config key 'attack.target': {target!r} is not allowed; allowed values: head, "
            "medium, tail, or comma-separated 0-based item ids"
        ) from None
    bad = [i for i in ids if not 0 <= i < n]
    if not ids or bad:
        raise ConfigError(f"config key 'attack.target': item ids must be in [0, {n}) (got {t!r})")
    return np.asarray(ids, dtype=np.int64)


def victim_users(fraction: float, benign_users: np.ndarray, seed: int) -> np.ndarray:
    """A seeded ``fraction`` of ``benign_users`` (sorted)."""
    benign = np.asarray(benign_users, dtype=np.int64)
    m = int(round(fraction * benign.size))
    if m <= 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(derive_seed(seed, "victims"))
    return np.sort(rng.choice(benign, size=m, replace=False))


def pollute_view(ud, sequences: Mapping[int, np.ndarray], *, update_train: bool):
    """``ud`` with the training sequences of the users in ``sequences`` replaced (see the
    module docstring for ``update_train``)."""
    from fedrec.recsys.splits import Ragged

    if not sequences:
        return ud
    seqs = ud.train_seq.to_lists()
    for u, s in sequences.items():
        seqs[int(u)] = np.asarray(s, dtype=np.int64)
    out = {"train_seq": Ragged.from_lists(seqs)}
    if update_train:
        items = ud.train.to_lists()
        for u, s in sequences.items():
            items[int(u)] = np.unique(np.asarray(s, dtype=np.int64))
        out["train"] = Ragged.from_lists(items)
    return dataclasses.replace(ud, **out)


@dataclasses.dataclass(frozen=True)
class Threat:
    """The resolved threat model of a run (the same on the server and on every node)."""

    attackers: np.ndarray  # malicious client ids (sorted)
    attacker_users: np.ndarray  # the users those clients own (sorted)
    targets: np.ndarray  # target item ids (0-based)
    victims: np.ndarray  # benign users polluted at inference (sorted)

    def is_attacker(self, client_id: int) -> bool:
        return bool(np.isin(client_id, self.attackers))


def resolve(attack, seed: int, num_clients: int, ud, users_per_client: int) -> Threat:
    """:class:`Threat` from a run's ``attack`` section (:class:`fedrec.config.AttackConfig`),
    its seed and the clean :class:`~fedrec.recsys.splits.UserData` (client ``c`` owns users
    ``c * users_per_client ...``)."""
    from fedrec.recsys.data import client_users

    att = attacker_ids(attack.kind, attack.fraction, attack.client_ids, num_clients, seed)
    users = (
        np.concatenate([client_users(int(c), users_per_client, ud.num_users) for c in att])
        if att.size
        else np.zeros(0, dtype=np.int64)
    )
    targets = (
        target_items(attack.target, ud.item_counts(), seed)
        if attack.kind != "none"
        else np.zeros(0, dtype=np.int64)
    )
    benign = np.setdiff1d(np.arange(ud.num_users), users)
    victims = victim_users(attack.inference_victims, benign, seed)
    return Threat(att, np.sort(users), targets, victims)
