"""The dataset registry: names, metadata and the cached ``load_dataset`` entry point.

Choices:

* Canonical names are ``adult``, ``compas``, ``german``, ``bank``, ``drug-consumption``,
  ``ml-100k``, ``lastfm``, ``synthetic-rec``. The raw-directory names
  (``bank-marketing``, ``hetrec2011-lastfm-2k``) and ``drug`` are accepted as aliases.
* ``sensitive``/``target`` default to the first listed value. For recommendation sets
  ``sensitive`` is only validated (it names a key of ``user_attrs``; the whole
  ``user_attrs`` dict is always returned) and there are no targets.
* ``load_dataset`` caches parsed datasets in-process (``functools.lru_cache`` keyed by
  the canonical name, sensitive, target and keyword arguments), because every simulated
  client in a process calls it. Since every raw file is sha256-verified, the parsed
  result does not depend on where the files were found, so the cache ignores the
  environment. The cached object is shared: its numpy arrays are made **read-only** so
  that an in-place change by one client cannot leak into another; copy before
  modifying. ``clear_cache()`` empties the cache.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError, FedrecError
from . import recsys, tabular

__all__ = [
    "DatasetInfo",
    "DATASETS",
    "list_datasets",
    "get_dataset_info",
    "load_dataset",
    "canonical_name",
    "clear_cache",
]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    kind: str
    description: str
    license: str
    shipped: bool
    sensitive: tuple[str, ...]
    default_sensitive: str | None
    targets: tuple[str, ...]
    default_target: str | None
    loader: Callable[..., Any]


_CC = "CC BY 4.0 (UCI), shipped with attribution; see NOTICE"


def _factworld(
    num_people: int = 200,
    forget_fraction: float = 0.1,
    holdout_fraction: float = 0.1,
    idiosyncratic_fraction: float = 0.3,
    seed: int = 0,
):
    """The ``factworld`` dataset: :func:`fedrec.data.factworld.make_fact_world` (all six
    attributes, tiers 1/3/10 with shares 0.4/0.4/0.2) from ``dataset.options``."""
    from fedrec.data.factworld import make_fact_world

    return make_fact_world(
        num_people=int(num_people),
        forget_fraction=float(forget_fraction),
        holdout_fraction=float(holdout_fraction),
        idiosyncratic_fraction=float(idiosyncratic_fraction),
        seed=int(seed),
    )


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        DatasetInfo(
            "adult",
            "tabular",
            "UCI Adult census income, train+test pooled, '?' rows dropped (45,222 rows)",
            _CC,
            True,
            tabular.ADULT_SENSITIVE,
            "sex",
            ("income",),
            "income",
            tabular.load_adult,
        ),
        DatasetInfo(
            "compas",
            "tabular",
            "ProPublica COMPAS two-year recidivism, standard filter (6,172 rows)",
            "ProPublica Data Terms of Use; download-only",
            False,
            tabular.COMPAS_SENSITIVE,
            "race",
            ("two_year_recid",),
            "two_year_recid",
            tabular.load_compas,
        ),
        DatasetInfo(
            "german",
            "tabular",
            "Statlog German Credit (1,000 rows)",
            _CC,
            True,
            tabular.GERMAN_SENSITIVE,
            "sex",
            ("credit",),
            "credit",
            tabular.load_german,
        ),
        DatasetInfo(
            "bank",
            "tabular",
            "UCI Bank Marketing, bank-full.csv (45,211 rows)",
            _CC,
            True,
            tabular.BANK_SENSITIVE,
            "age",
            ("y",),
            "y",
            tabular.load_bank,
        ),
        DatasetInfo(
            "drug-consumption",
            "tabular",
            "UCI Drug consumption (quantified), 7-class drug use (1,885 rows)",
            _CC,
            True,
            tabular.DRUG_SENSITIVE,
            "gender",
            tuple(tabular.DRUG_COLUMNS),
            "cannabis",
            tabular.load_drug_consumption,
        ),
        DatasetInfo(
            "ml-100k",
            "recsys",
            "MovieLens-100K ratings with user gender/age/occupation",
            "GroupLens research licence, no redistribution; download-only",
            False,
            ("gender", "age_bucket", "occupation"),
            "gender",
            (),
            None,
            recsys.load_ml100k,
        ),
        DatasetInfo(
            "lastfm",
            "recsys",
            "hetrec2011-lastfm-2k user-artist listening pairs (implicit)",
            "Last.fm non-commercial use; download-only",
            False,
            (),
            None,
            (),
            None,
            recsys.load_lastfm,
        ),
        DatasetInfo(
            "synthetic-rec",
            "recsys",
            "SYNTHETIC recommendation world with a planted binary user attribute",
            "generated (no data licence)",
            True,
            ("gender",),
            "gender",
            (),
            None,
            recsys.synthetic_recommendation,
        ),
        DatasetInfo(
            "factworld",
            "text",
            "SYNTHETIC TOFU-like fact world: fictitious people x question-answer facts "
            "(language-model unlearning; fedrec.data.factworld)",
            "generated (no data licence)",
            True,
            (),
            None,
            (),
            None,
            _factworld,
        ),
    ]
}

ALIASES = {
    "bank-marketing": "bank",
    "drug": "drug-consumption",
    "hetrec2011-lastfm-2k": "lastfm",
    "movielens-100k": "ml-100k",
}


def canonical_name(name: str) -> str:
    return ALIASES.get(name, name)


def list_datasets() -> list[DatasetInfo]:
    return list(DATASETS.values())


def get_dataset_info(name: str) -> DatasetInfo:
    info = DATASETS.get(canonical_name(name))
    if info is None:
        raise DataError(f"unknown dataset '{name}'; allowed: {', '.join(DATASETS)}")
    return info


def _freeze(obj: Any) -> Any:
    for arr in _arrays(obj):
        arr.flags.writeable = False
    return obj


def _arrays(obj: Any) -> list[np.ndarray]:
    out = [v for v in vars(obj).values() if isinstance(v, np.ndarray)]
    for v in vars(obj).values():
        if isinstance(v, dict):
            out.extend(x for x in v.values() if isinstance(x, np.ndarray))
    return out


@functools.lru_cache(maxsize=32)
def _load_cached(name: str, sensitive: str | None, target: str | None, kwargs: tuple) -> Any:
    info = DATASETS[name]
    if info.kind == "tabular":
        return _freeze(info.loader(sensitive=sensitive, target=target, **dict(kwargs)))
    return _freeze(info.loader(**dict(kwargs)))


def load_dataset(
    name: str, *, sensitive: str | None = None, target: str | None = None, **kwargs: Any
):
    """Load (and cache) dataset ``name``; see :data:`DATASETS` for the allowed values."""
    info = get_dataset_info(name)
    if sensitive is None:
        sensitive = info.default_sensitive
    elif sensitive not in info.sensitive:
        allowed = ", ".join(info.sensitive) or "none"
        raise DataError(
            f"dataset '{info.name}': unknown sensitive attribute '{sensitive}'; allowed: {allowed}"
        )
    if target is None:
        target = info.default_target
    elif target not in info.targets:
        allowed = ", ".join(info.targets) or "none"
        raise DataError(f"dataset '{info.name}': unknown target '{target}'; allowed: {allowed}")
    params = inspect.signature(info.loader).parameters
    accepted = [p for p in params if p not in ("sensitive", "target")]
    bad = sorted(set(kwargs) - set(accepted))
    if bad:
        raise DataError(
            f"dataset '{info.name}': unknown option(s) {', '.join(bad)}; "
            f"allowed: {', '.join(accepted) or 'none'}"
        )
    kwargs = {k: _option(info.name, k, v, params[k].default) for k, v in kwargs.items()}
    key = tuple(sorted(kwargs.items()))
    try:
        hash(key)
    except TypeError:
        raise DataError(
            f"dataset '{info.name}': options must be hashable scalars, got {kwargs}"
        ) from None
    try:
        return _load_cached(info.name, sensitive, target, key)
    except (ValueError, TypeError, MemoryError) as exc:  # a generator rejecting an option
        if isinstance(exc, FedrecError) or not key:
            raise
        raise DataError(
            f"dataset '{info.name}': cannot build it with options "
            f"{', '.join(f'{k}={v}' for k, v in key)} ({exc})"
        ) from None


def _option(dataset: str, name: str, value: Any, default: Any) -> Any:
    """An option value converted to the type of the loader parameter's default (an int,
    a finite float in 64 bits, true/false); other parameters take the value as given."""
    from fedrec.config import coerce

    typ = type(default)
    if typ not in (bool, int, float):
        return value
    try:
        return coerce(name, value, typ)
    except ConfigError as exc:  # "config key 'name': 'abc' is not an integer"
        detail = str(exc).removeprefix("config key ")
        raise DataError(f"dataset '{dataset}': option {detail}") from None


def clear_cache() -> None:
    """Forget the datasets cached by :func:`load_dataset`."""
    _load_cached.cache_clear()
