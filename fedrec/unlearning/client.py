"""The client side of an unlearning request: raise it, record it privately, honour it.

In fedrec a request belongs to the client that holds the data. The run config carries the
requests (in a simulation the request file stands for what the users ask their own
devices; each client reads only the entries about its own users, items or itself), and the
server learns about them only by polling (``query.fedrec_unlearn_poll``,
:func:`poll`). A client answers with **counts** (how many users, pairs and items it
forgets, whether it leaves) and, for ``items`` requests, the item ids (a public catalogue
fact). Forgotten pairs and the users' items never leave the client.

What the client keeps (private state fields, never sent, kept through a state reset so a
retrain cannot bring the data back):

- :data:`FORGET_USERS` its users whose data is forgotten (a cross-silo client forgetting
  some of its users; a per-user client that forgets its user leaves instead);
- :data:`FORGET_PAIRS` ``(n, 2)`` forgotten (user, item) training pairs;
- :data:`FORGET_ITEMS` items forgotten by everyone.

:func:`forget_view` applies them to the leave-one-out data a recommender client trains
on. Pure (numpy; no flwr import).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from fedrec.unlearning.requests import UnlearningRequest, load_requests

__all__ = [
    "FORGET_FIELDS",
    "FORGET_ITEMS",
    "FORGET_PAIRS",
    "FORGET_USERS",
    "due",
    "forget_view",
    "parse_config_requests",
    "poll",
]

FORGET_USERS = "unlearn.users"
FORGET_PAIRS = "unlearn.pairs"
FORGET_ITEMS = "unlearn.items"
FORGET_FIELDS = (FORGET_USERS, FORGET_PAIRS, FORGET_ITEMS)
#: a client's private evidence for SISA's learned aggregator (fedrec.algorithms.sisa)
SISA_EVIDENCE = "sisa.evidence"
# poll reply metric keys (counts; item ids only for items requests)
LEAVE = "unlearn-leave"
N_USERS = "unlearn-users"
N_PAIRS = "unlearn-pairs"
N_ITEMS = "unlearn-items"
ITEM_IDS = "unlearn-item-ids"
N_REQUESTS = "unlearn-requests"


def parse_config_requests(text: str) -> list[UnlearningRequest]:
    """The requests of ``unlearning.requests`` (JSON, as the runner stores them; a TOML
    path is resolved by the runner before anything is sent)."""
    if not text:
        return []
    data = json.loads(text)
    return load_requests(data)


def due(requests: Sequence[UnlearningRequest], server_round: int | None) -> list[int]:
    """Indices of the requests served at ``server_round`` (None: after training)."""
    return [i for i, r in enumerate(requests) if r.round == server_round]


def poll(
    requests: Sequence[UnlearningRequest],
    indices: Sequence[int],
    client_id: int,
    owned_users: np.ndarray,
    state: MutableMapping[str, Any],
) -> dict[str, Any]:
    """Apply the due requests that concern ``client_id`` to its private ``state`` and
    return the poll reply (counts; see the module docstring).

    ``owned_users``: the user ids of the client (empty for a classifier client). A client
    whose users are all forgotten leaves (:data:`LEAVE` = 1), as does the target of a
    ``client`` request.
    """
    owned = np.asarray(owned_users, dtype=np.int64)
    users: set[int] = set(int(u) for u in np.asarray(state.get(FORGET_USERS, []), dtype=np.int64))
    pairs_old = np.asarray(state.get(FORGET_PAIRS, np.zeros((0, 2))), dtype=np.int64).reshape(-1, 2)
    pairs: set[tuple[int, int]] = {(int(u), int(i)) for u, i in pairs_old}
    items: set[int] = set(int(i) for i in np.asarray(state.get(FORGET_ITEMS, []), dtype=np.int64))
    n_users0, n_pairs0, n_items0 = len(users), len(pairs), len(items)
    leave, n_req, new_items = False, 0, set()
    own = set(owned.tolist())
    for i in indices:
        r = requests[i]
        if r.kind == "client" and client_id in {int(c) for c in r.ids}:
            leave, n_req = True, n_req + 1
        elif r.kind == "users":
            mine = own & {int(u) for u in r.ids}
            if mine:
                users |= mine
                n_req += 1
        elif r.kind == "interactions":
            mine_p = {(int(u), int(it)) for u, it in r.ids if int(u) in own}
            if mine_p:
                pairs |= mine_p
                n_req += 1
        elif r.kind == "items":
            new_items |= {int(it) for it in r.ids} - items
            items |= {int(it) for it in r.ids}
            n_req += 1
    if own and own <= users:
        leave = True
    if len(users) > n_users0:
        state[FORGET_USERS] = np.asarray(sorted(users), dtype=np.int64)
    if len(pairs) > n_pairs0:
        state[FORGET_PAIRS] = np.asarray(sorted(pairs), dtype=np.int64).reshape(-1, 2)
    if len(items) > n_items0:
        state[FORGET_ITEMS] = np.asarray(sorted(items), dtype=np.int64)
    return {
        N_REQUESTS: n_req,
        LEAVE: int(leave),
        N_USERS: len(users) - n_users0,
        N_PAIRS: len(pairs) - n_pairs0,
        N_ITEMS: len(items) - n_items0,
        ITEM_IDS: np.asarray(sorted(new_items), dtype=np.int64),
    }


def forget_records(states: Mapping[int, Mapping[str, Any]]) -> tuple[set[int], set, set[int]]:
    """The union of the forget records of a cohort: (users, pairs, items)."""
    users: set[int] = set()
    pairs: set[tuple[int, int]] = set()
    items: set[int] = set()
    for c in states:
        s = states[c]
        if FORGET_USERS in s:
            users |= {int(u) for u in np.asarray(s[FORGET_USERS])}
        if FORGET_PAIRS in s:
            pairs |= {(int(u), int(i)) for u, i in np.asarray(s[FORGET_PAIRS]).reshape(-1, 2)}
        if FORGET_ITEMS in s:
            items |= {int(i) for i in np.asarray(s[FORGET_ITEMS])}
    return users, pairs, items


def forget_view(ud, users=(), pairs=(), items=(), *, only: bool = False):
    """``ud`` (a :class:`~fedrec.recsys.splits.UserData`) without the forgotten training
    data: every training interaction of ``users``, the ``(user, item)`` ``pairs`` and every
    interaction with ``items`` removed from ``train`` and ``train_seq`` (held-out items are
    not training data and stay). Returns ``ud`` itself when nothing is forgotten.

    ``only=True`` keeps the forgotten interactions instead (the forget set a forgetting
    client ascends on)."""
    users = {int(u) for u in users}
    pairs = {(int(u), int(i)) for u, i in pairs}
    items = {int(i) for i in items}
    if not (users or pairs or items) and not only:
        return ud
    from fedrec.recsys.splits import Ragged

    def drop(r: Ragged) -> Ragged:
        rows = r.rows
        keep = np.ones(len(r.indices), dtype=bool)
        if users:
            keep &= ~np.isin(rows, np.fromiter(users, dtype=np.int64))
        if items:
            keep &= ~np.isin(r.indices, np.fromiter(items, dtype=np.int64))
        if pairs:
            key = rows * ud.num_items + r.indices
            pk = np.asarray([u * ud.num_items + i for u, i in pairs], dtype=np.int64)
            keep &= ~np.isin(key, pk)
        if only:
            keep = ~keep
        return Ragged.from_rows(rows[keep], r.indices[keep], len(r))

    return replace(ud, train=drop(ud.train), train_seq=drop(ud.train_seq))
