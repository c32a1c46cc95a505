"""Recommendation data as the federated recommenders see it (no flwr import).

:func:`user_data` loads a recommendation dataset and its leave-one-out split once per
process; :func:`client_users` says which users logical client ``c`` owns (users
``c*upc .. (c+1)*upc - 1``). Both halves of every recommender (``fedmf``, ``fedsasrec``,
``raid``, ``lego``) read data through this module, never through each other.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator

import numpy as np

from fedrec.config import RunConfig


def parse_options(options: str) -> dict:
    """``"a=1,b=0.5,c=x"`` -> ``{"a": 1, "b": 0.5, "c": "x"}`` (config key ``dataset.options``)."""
    from fedrec.errors import ConfigError

    out = {}
    for part in filter(None, (p.strip() for p in str(options).split(","))):
        k, sep, v = part.partition("=")
        if not sep or not k.strip():
            raise ConfigError(
                f"config key 'dataset.options': '{part}' is not key=value "
                "(example: num_users=10000,num_items=2000)"
            )
        raw = v.strip()
        value: int | float | str = raw
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                pass
        out[k.strip()] = value
    return out


_OVERLAY: contextvars.ContextVar = contextvars.ContextVar("fedrec_user_data", default=None)


def cfg_user_data(cfg: RunConfig):
    """:func:`user_data` for a run config (dataset name and ``dataset.options``); inside
    :func:`overlay`, its UserData instead of the split's."""
    ds, ud = user_data(cfg.dataset.name, cfg.dataset.options, cfg.dataset.split)
    view = _OVERLAY.get()
    return ds, (ud if view is None else view)


@contextlib.contextmanager
def overlay(ud) -> Iterator[None]:
    """Within the block, :func:`cfg_user_data` returns ``ud`` (the attack runs' polluted
    profiles: an honest client half reads its data through :func:`cfg_user_data` and runs
    unchanged on what an attacker wrote; see :mod:`fedrec.clients.attacks`)."""
    token = _OVERLAY.set(ud)
    try:
        yield
    finally:
        _OVERLAY.reset(token)


@functools.lru_cache(maxsize=4)
def user_data(dataset: str, options: str = "", split: str = "time"):
    """(RecDataset, leave-one-out UserData), cached per process. ``split``: the order of
    :func:`~fedrec.recsys.splits.leave_one_out` (``random`` uses the fixed seed 0, so
    every run sees the same split)."""
    from fedrec.data import RecDataset, load_dataset
    from fedrec.errors import ConfigError
    from fedrec.recsys.splits import leave_one_out

    ds = load_dataset(dataset, **parse_options(options))
    if not isinstance(ds, RecDataset):
        raise ConfigError(
            f"config key 'dataset.name': '{dataset}' is not a recommendation "
            "dataset; fedmf needs one (ml-100k, lastfm, synthetic-rec)"
        )
    return ds, leave_one_out(ds, by=split, seed=0)


def client_users(client_id: int, users_per_client: int, num_users: int) -> np.ndarray:
    lo = client_id * users_per_client
    return np.arange(lo, min(lo + users_per_client, num_users), dtype=np.int64)


def num_clients_for(num_users: int, users_per_client: int) -> int:
    return -(-num_users // users_per_client)
