"""Tabular fairness datasets: Adult, COMPAS, German Credit, Bank Marketing, Drug consumption.

Each loader returns a :class:`TabularDataset` with ``X`` float32 (n, d), ``y`` int64
labels ``0..C-1``, ``a`` int64 sensitive groups ``0..G-1``. Parsers take the raw bytes
(``parse_*``) so they can be tested on small fixtures; ``load_*`` read verified raw
files through :mod:`fedrec.data.sources`.

Choices common to all sets (the papers leave them open):

* **Preprocessing.** Numeric columns are z-scored over the *whole* dataset (population
  std, ``ddof=0``; a constant column is only centred). Categorical columns are one-hot
  encoded with one column per observed category, categories in sorted order, features
  named ``"column=value"``. Column order follows the raw file. Standardizing over the
  whole set (rather than per client or on a training split) is a deliberate
  simplification shared by FL fairness benchmarks: it leaks only first/second moments.
* **Row order** is the raw file order; partitioners do the shuffling.
* **Group coding.** ``a = 0`` is the conventionally privileged group and ``a = 1`` the
  protected one (Male/Female, White/non-White, other/African-American, age >= 25 /
  < 25); ``group_names`` gives the names in code order.
* **The sensitive attribute stays among the features** (the usual choice in the
  fairness literature; fairness-through-unawareness is not assumed). Drop the
  corresponding ``feature_names`` columns yourself to study unawareness.

Per dataset:

* **adult** - ``adult.data`` and ``adult.test`` are pooled (train rows first); the test
  file's ``|1x3 Cross validator`` line and the trailing ``.`` of its labels are removed;
  rows with any ``?`` are dropped -> 45,222 rows. Target ``income``: classes
  ``["<=50K", ">50K"]``. ``fnlwgt`` (a census sampling weight, not a property of the
  person) is dropped, and ``education`` is dropped because ``education-num`` encodes it
  one-to-one. Sensitive ``sex`` (default; Male=0, Female=1) or ``race`` binarized
  White=0 / non-White=1 (the original five race categories stay one-hot in the features).
* **compas** - ProPublica's two-year file with ProPublica's standard filter
  (``days_b_screening_arrest`` within [-30, 30] and not missing, ``is_recid != -1``,
  ``c_charge_degree != "O"``, ``score_text != "N/A"``) -> 6,172 rows. The ``name``,
  ``first``, ``last`` and ``dob`` columns are never extracted from the parsed rows
  (privacy). Target ``two_year_recid`` (classes ``["no", "yes"]``). Sensitive ``race``
  (default) is binarized *other=0 / African-American=1* so that all 6,172 rows stay
  (FedFACT keeps only Caucasian vs African-American; filter ``feature_names`` /
  rows yourself for that variant), or ``sex`` (Male=0, Female=1). Features: ``age``,
  ``juv_fel_count``, ``juv_misd_count``, ``juv_other_count``, ``priors_count`` (numeric);
  ``age_cat``, ``sex``, binarized ``race``, ``c_charge_degree`` (one-hot). The COMPAS
  outputs ``decile_score``/``score_text`` are not used. The header repeats
  ``decile_score`` and ``priors_count``; the first occurrence is used.
* **german** - ``german.data`` (21 space-separated columns). Target ``credit``: raw
  1 = good, 2 = bad -> classes ``["bad", "good"]`` (bad=0, good=1). Sensitive ``sex``
  (default) from the personal-status code: A91 (male, divorced/separated), A93 (male,
  single), A94 (male, married/widowed) -> male=0; A92 (female, divorced/separated/
  married) and A95 (female, single; absent from the data) -> female=1. Or ``age``:
  age >= 25 -> 0, age < 25 -> 1. The 13 categorical attributes are one-hot on their raw
  codes (``purpose=A43``; meanings in ``german.doc``); the 7 numeric ones are z-scored.
* **bank** - ``bank-full.csv`` (45,211 rows; ``;``-separated, quoted, header). Target
  ``y`` (classes ``["no", "yes"]``). Sensitive ``age``: age >= 25 -> 0, < 25 -> 1; age
  also stays a numeric feature. ``duration`` is dropped: the dataset documentation says
  it is only known after the call and should be discarded for a realistic predictive
  model. ``day`` is numeric, ``month`` categorical; ``pdays = -1`` (never contacted) is
  kept as a number.
* **drug-consumption** - 1,885 rows (leading empty line and CRLF handled). Target one
  of the 19 drug columns (default ``cannabis``), 7 classes ``CL0..CL6`` (never used,
  used over a decade ago, in the last decade, last year, last month, last week, last
  day). Features: the 12 quantified columns (age, gender, education, country,
  ethnicity, Nscore, Escore, Oscore, Ascore, Cscore, impulsive, SS) treated as numeric
  (the authors' quantification) and z-scored; ID is dropped. Sensitive ``gender``
  (default): 0.48246 = female, -0.48246 = male (Fehrman et al. 2017, Table 1:
  942 female, 943 male) -> male=0, female=1; ``ethnicity``: -0.31685 = White -> 0,
  other values -> 1; or ``age``: 18-24 (-0.95197) -> 1, 25+ -> 0.
"""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from numpy.typing import ArrayLike

from ..errors import DataError, FedrecError
from . import sources

_F = TypeVar("_F", bound=Callable[..., Any])

__all__ = [
    "TabularDataset",
    "load_adult",
    "load_compas",
    "load_german",
    "load_bank",
    "load_drug_consumption",
    "parse_adult",
    "parse_compas",
    "parse_german",
    "parse_bank",
    "parse_drug_consumption",
    "DRUG_COLUMNS",
]


@dataclass
class TabularDataset:
    name: str
    X: np.ndarray
    y: np.ndarray
    a: np.ndarray
    feature_names: list[str]
    class_names: list[str]
    group_names: list[str]
    sensitive: str
    target: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_groups(self) -> int:
        return len(self.group_names)

    @property
    def num_features(self) -> int:
        return int(self.X.shape[1])

    def __len__(self) -> int:
        return int(self.X.shape[0])


# --------------------------------------------------------------------------- helpers


def _choose(dataset: str, what: str, value: str | None, allowed: Sequence[str]) -> str:
    if value is None:
        return allowed[0]
    if value not in allowed:
        raise DataError(
            f"dataset '{dataset}': unknown {what} '{value}'; allowed: {', '.join(allowed)}"
        )
    return value


def _assemble(columns: Sequence[tuple[str, str, ArrayLike]]) -> tuple[np.ndarray, list[str]]:
    """Build the design matrix from ``(name, "num"|"cat", values)`` columns."""
    blocks: list[np.ndarray] = []
    names: list[str] = []
    for cname, kind, values in columns:
        if kind == "num":
            v = np.asarray(values, dtype=np.float64)
            std = v.std()
            blocks.append(((v - v.mean()) / (std if std > 0 else 1.0))[:, None])
            names.append(cname)
        elif kind == "cat":
            vals = np.asarray(values, dtype=str)
            cats, codes = np.unique(vals, return_inverse=True)
            onehot = np.zeros((len(vals), len(cats)), dtype=np.float64)
            onehot[np.arange(len(vals)), codes] = 1.0
            blocks.append(onehot)
            names.extend(f"{cname}={c}" for c in cats)
        else:  # pragma: no cover - programming error
            raise ValueError(kind)
    X = np.concatenate(blocks, axis=1).astype(np.float32)
    return X, names


def _make(
    name: str,
    columns: Sequence[tuple[str, str, ArrayLike]],
    y: np.ndarray,
    a: np.ndarray,
    class_names: list[str],
    group_names: list[str],
    sensitive: str,
    target: str,
) -> TabularDataset:
    if len(y) == 0:
        raise DataError(f"dataset '{name}': no rows left after parsing")
    X, feature_names = _assemble(columns)
    return TabularDataset(
        name=name,
        X=X,
        y=np.asarray(y, dtype=np.int64),
        a=np.asarray(a, dtype=np.int64),
        feature_names=feature_names,
        class_names=class_names,
        group_names=group_names,
        sensitive=sensitive,
        target=target,
    )


def _bad_row(dataset: str, fname: str, lineno: int, detail: str) -> DataError:
    return DataError(f"dataset '{dataset}': cannot parse {fname} line {lineno} ({detail})")


def parse_guard(dataset: str, files: str) -> Callable[[_F], _F]:
    """Decorate a ``parse_*`` function: malformed raw bytes (a wrong encoding, a non-number
    in a numeric column, too few fields) raise a one-line :class:`DataError` naming the
    dataset and its ``files`` instead of a ValueError / IndexError from deep inside."""

    def wrap(fn: _F) -> _F:
        @functools.wraps(fn)
        def parse(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except FedrecError:
                raise
            except (ValueError, IndexError, KeyError, csv.Error) as exc:
                detail = " ".join(str(exc).split())[:200] or type(exc).__name__
                raise DataError(
                    f"dataset '{dataset}': cannot parse {files} ({detail}); the raw file is "
                    "corrupted or not the registered version"
                ) from None

        return parse  # type: ignore[return-value]

    return wrap


# --------------------------------------------------------------------------- adult

ADULT_COLUMNS = [
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status",
    "occupation", "relationship", "race", "sex", "capital-gain", "capital-loss",
    "hours-per-week", "native-country", "income",
]  # fmt: skip
_ADULT_NUM = {"age", "education-num", "capital-gain", "capital-loss", "hours-per-week"}
_ADULT_DROP = {"fnlwgt", "education", "income"}
ADULT_SENSITIVE = ("sex", "race")


def _adult_rows(data: bytes, fname: str) -> list[list[str]]:
    rows = []
    for lineno, line in enumerate(data.decode("ascii").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("|"):
            continue
        fields = line.replace(" ", "").split(",")  # no Adult value contains a space
        if len(fields) != len(ADULT_COLUMNS):
            raise _bad_row(
                "adult", fname, lineno, f"{len(fields)} fields, expected {len(ADULT_COLUMNS)}"
            )
        if "?" in fields:
            continue
        fields[-1] = fields[-1].rstrip(".")
        rows.append(fields)
    return rows


@parse_guard("adult", "adult.data/adult.test")
def parse_adult(
    data: bytes, test: bytes, *, sensitive: str | None = None, target: str | None = None
) -> TabularDataset:
    sensitive = _choose("adult", "sensitive attribute", sensitive, ADULT_SENSITIVE)
    target = _choose("adult", "target", target, ("income",))
    rows = _adult_rows(data, "adult.data") + _adult_rows(test, "adult.test")
    cols = list(zip(*rows)) if rows else [()] * len(ADULT_COLUMNS)
    col = {n: cols[i] for i, n in enumerate(ADULT_COLUMNS)}
    class_names = ["<=50K", ">50K"]
    bad = set(col["income"]) - set(class_names)
    if bad:
        raise DataError(
            f"dataset 'adult': unexpected income labels {sorted(bad)}; allowed: {class_names}"
        )
    y = np.array([v == ">50K" for v in col["income"]], dtype=np.int64)
    if sensitive == "sex":
        a = np.array([v == "Female" for v in col["sex"]], dtype=np.int64)
        groups = ["Male", "Female"]
    else:
        a = np.array([v != "White" for v in col["race"]], dtype=np.int64)
        groups = ["White", "non-White"]
    columns = [
        (n, "num" if n in _ADULT_NUM else "cat", col[n])
        for n in ADULT_COLUMNS
        if n not in _ADULT_DROP
    ]
    return _make("adult", columns, y, a, class_names, groups, sensitive, target)


def load_adult(*, sensitive: str | None = None, target: str | None = None) -> TabularDataset:
    """UCI Adult, train+test pooled, rows with '?' dropped (45,222 rows)."""
    return parse_adult(
        sources.read_bytes("adult", "adult.data"),
        sources.read_bytes("adult", "adult.test"),
        sensitive=sensitive,
        target=target,
    )


# --------------------------------------------------------------------------- compas

COMPAS_SENSITIVE = ("race", "sex")
_COMPAS_NEEDED = [
    "age", "age_cat", "sex", "race", "juv_fel_count", "juv_misd_count", "juv_other_count",
    "priors_count", "c_charge_degree", "days_b_screening_arrest", "is_recid", "score_text",
    "two_year_recid",
]  # fmt: skip


@parse_guard("compas", "compas-scores-two-years.csv")
def parse_compas(
    data: bytes, *, sensitive: str | None = None, target: str | None = None
) -> TabularDataset:
    sensitive = _choose("compas", "sensitive attribute", sensitive, COMPAS_SENSITIVE)
    target = _choose("compas", "target", target, ("two_year_recid",))
    reader = csv.reader(io.StringIO(data.decode("utf-8")))
    try:
        header = next(reader)
    except StopIteration:
        raise DataError("dataset 'compas': compas-scores-two-years.csv is empty") from None
    idx: dict[str, int] = {}
    for i, h in enumerate(header):
        idx.setdefault(h, i)  # first occurrence of the repeated columns
    missing = [c for c in _COMPAS_NEEDED if c not in idx]
    if missing:
        raise DataError(
            f"dataset 'compas': compas-scores-two-years.csv lacks columns {', '.join(missing)}"
        )
    pos = [idx[c] for c in _COMPAS_NEEDED]
    keep: list[list[str]] = []
    for lineno, row in enumerate(reader, 2):
        if not row:
            continue
        if len(row) < len(header):
            raise _bad_row("compas", "compas-scores-two-years.csv", lineno, f"{len(row)} fields")
        # only the needed columns are extracted: name/first/last/dob are never kept
        r = dict(zip(_COMPAS_NEEDED, (row[p] for p in pos)))
        days = r["days_b_screening_arrest"].strip()
        if not days or not -30 <= float(days) <= 30:
            continue
        if r["is_recid"].strip() == "-1" or r["c_charge_degree"] == "O" or r["score_text"] == "N/A":
            continue
        keep.append([r[c] for c in _COMPAS_NEEDED])
    col = {c: [row[i] for row in keep] for i, c in enumerate(_COMPAS_NEEDED)}
    y = np.array([int(v) for v in col["two_year_recid"]], dtype=np.int64)
    if y.size and not set(np.unique(y)) <= {0, 1}:
        raise DataError("dataset 'compas': two_year_recid must be 0/1")
    race_bin = ["African-American" if v == "African-American" else "other" for v in col["race"]]
    if sensitive == "race":
        a = np.array([v == "African-American" for v in race_bin], dtype=np.int64)
        groups = ["other", "African-American"]
    else:
        a = np.array([v == "Female" for v in col["sex"]], dtype=np.int64)
        groups = ["Male", "Female"]
    columns = [
        ("age", "num", col["age"]),
        ("age_cat", "cat", col["age_cat"]),
        ("sex", "cat", col["sex"]),
        ("race", "cat", race_bin),
        ("juv_fel_count", "num", col["juv_fel_count"]),
        ("juv_misd_count", "num", col["juv_misd_count"]),
        ("juv_other_count", "num", col["juv_other_count"]),
        ("priors_count", "num", col["priors_count"]),
        ("c_charge_degree", "cat", col["c_charge_degree"]),
    ]
    return _make("compas", columns, y, a, ["no", "yes"], groups, sensitive, target)


def load_compas(*, sensitive: str | None = None, target: str | None = None) -> TabularDataset:
    """ProPublica COMPAS two-year file with the standard filter (6,172 rows)."""
    return parse_compas(
        sources.read_bytes("compas", "compas-scores-two-years.csv"),
        sensitive=sensitive,
        target=target,
    )


# --------------------------------------------------------------------------- german

GERMAN_COLUMNS = [
    ("checking_status", "cat"), ("duration", "num"), ("credit_history", "cat"),
    ("purpose", "cat"), ("credit_amount", "num"), ("savings", "cat"),
    ("employment_since", "cat"), ("installment_rate", "num"), ("personal_status_sex", "cat"),
    ("other_debtors", "cat"), ("residence_since", "num"), ("property", "cat"),
    ("age", "num"), ("other_installment_plans", "cat"), ("housing", "cat"),
    ("existing_credits", "num"), ("job", "cat"), ("num_liable", "num"),
    ("telephone", "cat"), ("foreign_worker", "cat"),
]  # fmt: skip
GERMAN_SENSITIVE = ("sex", "age")
_GERMAN_SEX = {"A91": 0, "A93": 0, "A94": 0, "A92": 1, "A95": 1}


@parse_guard("german", "german.data")
def parse_german(
    data: bytes, *, sensitive: str | None = None, target: str | None = None
) -> TabularDataset:
    sensitive = _choose("german", "sensitive attribute", sensitive, GERMAN_SENSITIVE)
    target = _choose("german", "target", target, ("credit",))
    rows = []
    for lineno, line in enumerate(data.decode("ascii").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(GERMAN_COLUMNS) + 1:
            raise _bad_row("german", "german.data", lineno, f"{len(fields)} fields, expected 21")
        rows.append(fields)
    cols = list(zip(*rows)) if rows else [()] * (len(GERMAN_COLUMNS) + 1)
    raw_y = cols[-1]
    if not set(raw_y) <= {"1", "2"}:
        raise DataError(f"dataset 'german': credit labels {sorted(set(raw_y))}; allowed: 1, 2")
    y = np.array([v == "1" for v in raw_y], dtype=np.int64)  # good=1, bad=0
    if sensitive == "sex":
        ps = cols[8]
        unknown = set(ps) - set(_GERMAN_SEX)
        if unknown:
            raise DataError(
                f"dataset 'german': personal-status codes {sorted(unknown)}; allowed: A91-A95"
            )
        a = np.array([_GERMAN_SEX[v] for v in ps], dtype=np.int64)
        groups = ["male", "female"]
    else:
        a = np.array([int(v) < 25 for v in cols[12]], dtype=np.int64)
        groups = ["age>=25", "age<25"]
    columns = [(n, k, cols[i]) for i, (n, k) in enumerate(GERMAN_COLUMNS)]
    return _make("german", columns, y, a, ["bad", "good"], groups, sensitive, target)


def load_german(*, sensitive: str | None = None, target: str | None = None) -> TabularDataset:
    """Statlog German Credit (1,000 rows)."""
    return parse_german(
        sources.read_bytes("german", "german.data"), sensitive=sensitive, target=target
    )


# --------------------------------------------------------------------------- bank

BANK_NUM = {"age", "balance", "day", "campaign", "pdays", "previous"}
BANK_DROP = {"duration", "y"}
BANK_SENSITIVE = ("age",)


@parse_guard("bank", "bank-full.csv")
def parse_bank(
    data: bytes, *, sensitive: str | None = None, target: str | None = None
) -> TabularDataset:
    sensitive = _choose("bank", "sensitive attribute", sensitive, BANK_SENSITIVE)
    target = _choose("bank", "target", target, ("y",))
    reader = csv.reader(io.StringIO(data.decode("utf-8")), delimiter=";", quotechar='"')
    try:
        header = next(reader)
    except StopIteration:
        raise DataError("dataset 'bank': bank-full.csv is empty") from None
    if "y" not in header or "age" not in header:
        raise DataError("dataset 'bank': bank-full.csv lacks the 'y' or 'age' column")
    rows = []
    for lineno, row in enumerate(reader, 2):
        if not row:
            continue
        if len(row) != len(header):
            raise _bad_row(
                "bank", "bank-full.csv", lineno, f"{len(row)} fields, expected {len(header)}"
            )
        rows.append(row)
    cols = {h: [r[i] for r in rows] for i, h in enumerate(header)}
    if not set(cols["y"]) <= {"yes", "no"}:
        raise DataError(f"dataset 'bank': y labels {sorted(set(cols['y']))}; allowed: no, yes")
    y = np.array([v == "yes" for v in cols["y"]], dtype=np.int64)
    a = np.array([int(v) < 25 for v in cols["age"]], dtype=np.int64)
    columns = [
        (h, "num" if h in BANK_NUM else "cat", cols[h]) for h in header if h not in BANK_DROP
    ]
    return _make("bank", columns, y, a, ["no", "yes"], ["age>=25", "age<25"], sensitive, target)


def load_bank(*, sensitive: str | None = None, target: str | None = None) -> TabularDataset:
    """Bank Marketing, bank-full.csv (45,211 rows)."""
    return parse_bank(
        sources.read_bytes("bank", "bank-full.csv"), sensitive=sensitive, target=target
    )


# --------------------------------------------------------------------------- drug consumption

DRUG_FEATURES = [
    "age", "gender", "education", "country", "ethnicity", "nscore", "escore", "oscore",
    "ascore", "cscore", "impulsive", "ss",
]  # fmt: skip
DRUG_COLUMNS = [
    "cannabis", "alcohol", "amphet", "amyl", "benzos", "caff", "choc", "coke", "crack",
    "ecstasy", "heroin", "ketamine", "legalh", "lsd", "meth", "mushrooms", "nicotine",
    "semer", "vsa",
]  # fmt: skip
# (DRUG_COLUMNS lists cannabis first: it is the default target)
_DRUG_FILE_ORDER = [
    "alcohol", "amphet", "amyl", "benzos", "caff", "cannabis", "choc", "coke", "crack",
    "ecstasy", "heroin", "ketamine", "legalh", "lsd", "meth", "mushrooms", "nicotine",
    "semer", "vsa",
]  # fmt: skip
DRUG_SENSITIVE = ("gender", "ethnicity", "age")
_DRUG_WHITE = -0.31685
_DRUG_AGE_18_24 = -0.95197


@parse_guard("drug-consumption", "drug_consumption.data")
def parse_drug_consumption(
    data: bytes, *, sensitive: str | None = None, target: str | None = None
) -> TabularDataset:
    sensitive = _choose("drug-consumption", "sensitive attribute", sensitive, DRUG_SENSITIVE)
    target = _choose("drug-consumption", "target", target, DRUG_COLUMNS)
    ncols = 1 + len(DRUG_FEATURES) + len(_DRUG_FILE_ORDER)
    feats: list[list[float]] = []
    labels: list[list[int]] = []
    for lineno, line in enumerate(data.decode("ascii").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != ncols:
            raise _bad_row(
                "drug-consumption",
                "drug_consumption.data",
                lineno,
                f"{len(fields)} fields, expected {ncols}",
            )
        try:
            feats.append([float(v) for v in fields[1 : 1 + len(DRUG_FEATURES)]])
            labels.append(
                [int(v[2:]) if v.startswith("CL") else -1 for v in fields[1 + len(DRUG_FEATURES) :]]
            )
        except ValueError as exc:
            raise _bad_row("drug-consumption", "drug_consumption.data", lineno, str(exc)) from None
    F = np.asarray(feats, dtype=np.float64).reshape(-1, len(DRUG_FEATURES))
    L = np.asarray(labels, dtype=np.int64).reshape(-1, len(_DRUG_FILE_ORDER))
    y = L[:, _DRUG_FILE_ORDER.index(target)]
    if y.size and (y.min() < 0 or y.max() > 6):
        raise DataError(f"dataset 'drug-consumption': {target} labels outside CL0..CL6")
    if sensitive == "gender":
        a = (F[:, 1] > 0).astype(np.int64)
        groups = ["male", "female"]
    elif sensitive == "ethnicity":
        a = (np.abs(F[:, 4] - _DRUG_WHITE) > 1e-4).astype(np.int64)
        groups = ["White", "non-White"]
    else:
        a = (np.abs(F[:, 0] - _DRUG_AGE_18_24) < 1e-4).astype(np.int64)
        groups = ["age>=25", "age 18-24"]
    columns = [(n, "num", F[:, i]) for i, n in enumerate(DRUG_FEATURES)]
    classes = [f"CL{i}" for i in range(7)]
    return _make("drug-consumption", columns, y, a, classes, groups, sensitive, target)


def load_drug_consumption(
    *, sensitive: str | None = None, target: str | None = None
) -> TabularDataset:
    """Drug consumption (quantified), 1,885 rows, 7-class target."""
    return parse_drug_consumption(
        sources.read_bytes("drug-consumption", "drug_consumption.data"),
        sensitive=sensitive,
        target=target,
    )
