"""Experiment configuration: flat keys, typed sections, one-line errors.

An experiment is a TOML file. Its tables flatten to dotted keys
(``[train] lr = 0.1`` becomes ``train.lr``) that map 1:1 onto Flower's
``run_config`` (``[tool.flwr.app.config]`` in ``pyproject.toml`` and
``flwr run --run-config``), so the same keys work on every runtime.

Every key is defined below as a dataclass field whose ``metadata["doc"]`` is its
documentation (``fedrec list --keys`` prints them). Validation turns the flat dict
into a :class:`RunConfig` of typed sections. An unknown key, a value of the wrong
type or outside the allowed values raises :class:`~fedrec.errors.ConfigError`
naming the key and what is allowed; nothing is run or written before that.

Strategy- and model-specific keys live under ``strategy.params.*`` and
``model.params.*``; the selected plugin validates them against its own ``Params``
dataclass with the same machinery (:func:`validate_dataclass`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import numbers
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypedDict

from fedrec.errors import ConfigError

Scalar = int | float | bool | str


def key(
    default: Any,
    doc: str,
    *,
    choices: tuple | None = None,
    check: Callable[[Any], bool] | None = None,
    check_doc: str = "",
) -> Any:
    """Declare a config key: its default, documentation and constraints."""
    return field(
        default=default,
        metadata={"doc": doc, "choices": choices, "check": check, "check_doc": check_doc},
    )


def _positive(v: Any) -> bool:
    return v > 0


def _non_negative(v: Any) -> bool:
    return v >= 0


def _fraction(v: Any) -> bool:
    return 0.0 < v <= 1.0


def _open_fraction(v: Any) -> bool:
    return 0.0 < v < 1.0


def _probability(v: Any) -> bool:
    return 0.0 <= v < 1.0


def _ray_address(v: Any) -> bool:
    if v in ("", "auto"):
        return True
    host, sep, port = str(v).rpartition(":")
    bad = "/" in host or any(c.isspace() for c in host)
    return bool(sep and host and not bad and port.isdigit() and 0 < int(port) < 65536)


class _Check(TypedDict):
    """A reusable ``check`` / ``check_doc`` pair for :func:`key` (``**POSITIVE``)."""

    check: Callable[[Any], bool]
    check_doc: str


POSITIVE = _Check(check=_positive, check_doc="> 0")
NON_NEGATIVE = _Check(check=_non_negative, check_doc=">= 0")
FRACTION = _Check(check=_fraction, check_doc="in (0, 1]")
OPEN_FRACTION = _Check(check=_open_fraction, check_doc="in (0, 1)")
PROBABILITY = _Check(check=_probability, check_doc="in [0, 1)")


# --------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class DatasetConfig:
    name: str = key(
        "adult",
        "Registered dataset (`fedrec list`). Adult ships with fedrec; "
        "others are read from FEDREC_DATA_DIR, the cache, or downloaded.",
    )
    sensitive: str = key(
        "", "Sensitive attribute defining the groups; empty = the dataset's default (adult: sex)."
    )
    target: str = key("", "Prediction target; empty = the dataset's default.")
    test_fraction: float = key(
        0.2,
        "Share of each client's rows held out for its test split (seeded per client).",
        **OPEN_FRACTION,
    )
    options: str = key(
        "",
        "Loader options as 'key=value,key=value' (recommendation "
        "datasets; e.g. synthetic-rec: num_users=10000,num_items=2000). "
        "Unknown options are rejected with the allowed ones.",
    )
    split: str = key(
        "time",
        "Leave-one-out order of recommendation datasets: time (timestamps, ties by item "
        "id), order (row order), random (a fixed-seed shuffle per user: for untimed data "
        "such as lastfm).",
        choices=("time", "order", "random"),
    )


@dataclass(frozen=True)
class PartitionConfig:
    num_clients: int = key(10, "Number of logical clients (data partitions).", **POSITIVE)
    scheme: str = key(
        "dirichlet-sensitive",
        "How rows are split across clients: iid, "
        "dirichlet-label (Dir(alpha) over the label), dirichlet-sensitive "
        "(Dir(alpha) over the sensitive attribute), heterogeneous (FedFACT's "
        "split: per-client label/attribute correlation gamma_k ~ "
        "U[gamma-min, gamma-max]; binary label and attribute); by-person (fedlm / u2a: each "
        "fact-world person's documents on one client; fedlm's iid deals the documents).",
        choices=("iid", "dirichlet-label", "dirichlet-sensitive", "heterogeneous", "by-person"),
    )
    alpha: float = key(0.5, "Dirichlet concentration; smaller = more heterogeneous.", **POSITIVE)
    gamma_min: float = key(
        0.2,
        "heterogeneous: lower end of gamma_k.",
        check=lambda v: 0 <= v <= 1,
        check_doc="in [0, 1]",
    )
    gamma_max: float = key(
        0.8,
        "heterogeneous: upper end of gamma_k.",
        check=lambda v: 0 <= v <= 1,
        check_doc="in [0, 1]",
    )
    min_per_group: int = key(
        0,
        "Dirichlet schemes: every client gets at least this many rows "
        "of every value (label or sensitive group); 0 = no minimum. "
        "Local fairness needs members of every group on every client.",
        check=lambda v: v >= 0,
        check_doc=">= 0",
    )
    min_size: int = key(
        10, "Minimum rows per client for Dirichlet schemes (resampled until met).", **POSITIVE
    )


@dataclass(frozen=True)
class ModelConfig:
    name: str = key("logreg", "Classifier (`fedrec list`): logreg or mlp.")


@dataclass(frozen=True)
class TrainConfig:
    local_epochs: int = key(1, "Local epochs per round on each sampled client.", **POSITIVE)
    batch_size: int = key(64, "Local minibatch size.", **POSITIVE)
    lr: float = key(0.05, "Local learning rate.", **POSITIVE)
    optimizer: str = key("sgd", "Local optimizer.", choices=("sgd", "adam"))
    weight_decay: float = key(0.0, "L2 weight decay of the local optimizer.", **NON_NEGATIVE)


@dataclass(frozen=True)
class StrategyConfig:
    name: str = key(
        "fedavg",
        "Strategy plugin: a registered name (entry point group "
        "`fedrec.strategies`) or a dotted path `pkg.mod:Class`.",
    )
    fraction_train: float = key(
        1.0,
        "Share of clients sampled for training each round (seeded by run seed and round).",
        **FRACTION,
    )
    fraction_evaluate: float = key(1.0, "Share of clients sampled for evaluation.", **FRACTION)
    min_replies: int = key(
        1,
        "Fewest training replies a round aggregates; with fewer (crashed, dropped or timed-out "
        "clients) the round keeps the previous global model and records it as skipped.",
        **POSITIVE,
    )


@dataclass(frozen=True)
class RuntimeConfig:
    backend: str = key(
        "ray",
        "Where clients run: ray (Flower simulation engine), local "
        "(in-process, no Ray) or deployment (SuperLink/SuperNodes via "
        "`flwr run`).",
        choices=("ray", "local", "deployment"),
    )
    num_nodes: int = key(
        0,
        "Simulated SuperNodes; 0 = one per client. Fewer nodes than "
        "clients makes each node host several logical clients.",
        **NON_NEGATIVE,
    )
    client_num_cpus: float = key(1.0, "CPUs reserved per simulated ClientApp (Ray).", **POSITIVE)
    client_num_gpus: float = key(
        0.0, "GPUs (fraction allowed) per simulated ClientApp.", **NON_NEGATIVE
    )
    ray_num_cpus: int = key(0, "CPUs given to Ray; 0 = all of this machine's.", **NON_NEGATIVE)
    ray_address: str = key(
        "",
        "ray: empty = start a private Ray instance on 127.0.0.1 (as before); otherwise the "
        "address of a running Ray cluster's head (e.g. 127.0.0.1:6379, or 'auto'), which the "
        "simulation joins instead of starting one: runtime.ray-num-cpus is then ignored and "
        "the cluster's resources are used. This process must run on one of the cluster's "
        "nodes, and every node needs fedrec installed and its data (FEDREC_DATA_DIR).",
        check=_ray_address,
        check_doc="empty, 'auto' or host:port",
    )
    superlink: str = key(
        "127.0.0.1:9093",
        "deployment: address of the SuperLink's Control API that `flwr run` submits the run to.",
    )
    insecure: bool = key(
        True,
        "deployment: connect to the SuperLink without TLS (local "
        "testing only; use a Flower connection with certificates otherwise).",
    )
    root_certificates: str = key(
        "",
        "deployment: path of the PEM CA certificate that signed the SuperLink's TLS "
        "certificate; set, `flwr run` connects over TLS (runtime.insecure is then ignored).",
    )
    timeout: float = key(
        600.0,
        "Seconds to wait for nodes to connect and for the "
        "replies of one message phase before giving up.",
        **POSITIVE,
    )
    max_reply_mb: float = key(
        256.0,
        "Largest reply the server accepts, in MiB per client it carries; a larger one is "
        "rejected with a logged reason and the round goes on without it.",
        **POSITIVE,
    )
    state_dir: str = key(
        "",
        "Node-local folder where simulated nodes persist their clients' private state after "
        "every round (for `fedrec run --resume`); empty = <out>.incomplete/client_state. "
        "In deployment each SuperNode uses its own node-config 'state-dir'. The state never "
        "travels to the server.",
    )


@dataclass(frozen=True)
class OutputConfig:
    dir: str = key("", "Output directory; empty = runs/<strategy>-<dataset>-<time>.")
    plots: bool = key(True, "Write PNG plots of the per-round metrics.")
    checkpoint: bool = key(
        True,
        "After every round save the global model and the strategy's server state "
        "(checkpoint.npz, overwritten), and have every node save its clients' private state "
        "to its own disk (runtime.state-dir), so that an interrupted run can be resumed.",
    )
    progress: bool = key(True, "Show a progress bar per round.")
    keep_client_state: bool = key(
        True,
        "After the last round, every node saves its clients' private state to its own disk "
        "(<dir>/client_state/node-K-of-N.npz) so that `fedrec unlearn` can continue the run.",
    )
    client_metrics: bool = key(True, "Write per-client rows to rounds.jsonl.")
    resume: bool = key(
        False,
        "Continue the unfinished run in output.dir (<dir>.incomplete) from its last "
        "checkpoint: the global model, the strategy's server state, the round counter and "
        "the clients' state saved with it (set by `fedrec run --resume DIR`).",
    )
    callbacks: str = key(
        "",
        "Extra tracking callbacks, comma-separated: tensorboard, mlflow, wandb (offline), a "
        "name registered in the entry-point group `fedrec.callbacks`, or `pkg.mod:Class`. "
        "rounds.jsonl stays the source of truth.",
    )
    save_predictions: bool = key(
        False,
        "Audit: write predictions.csv (client, label, "
        "sensitive group, prediction per test row of the final "
        "round). Clients then SEND these rows to the server: for "
        "simulations and audits, not for private deployments.",
    )


@dataclass(frozen=True)
class UnlearningConfig:
    requests: str = key(
        "",
        "Unlearning requests: a request TOML ([[request]] tables, see "
        "fedrec.unlearning.requests) or its JSON; requests with a `round` are served at the "
        "end of that training round (the in-training schedule), the others after training.",
    )
    method: str = key(
        "retrain",
        "Unlearning method: a name registered in the entry-point group `fedrec.unlearning` "
        "(retrain, sisa, federaser, gradient-ascent, finetune, influence) or a dotted path.",
    )
    rounds: int = key(
        0,
        "Repair / fine-tune / calibration rounds of the approximate methods; 0 = the "
        "method's default.",
        **NON_NEGATIVE,
    )
    shards: int = key(
        0,
        "SISA: train this many independent shard federations (>= 2); 0 = unsharded.",
        **NON_NEGATIVE,
    )
    sharding: str = key(
        "random",
        "SISA shard assignment: random, or balanced (OT-balanced k-means on the clients' "
        "public item-profile counts, UltraRE).",
        choices=("random", "balanced"),
    )
    aggregator: str = key(
        "average",
        "SISA serving: average the shard models' outputs, or learned (per-shard weights "
        "fitted federatedly on the clients' validation items / rows).",
        choices=("average", "learned"),
    )
    record_history: bool = key(
        False,
        "Store every round's client updates on the server (history.npz): what "
        "`federaser` calibrates from. On automatically when the method is federaser.",
    )
    never_seen: float = key(
        0.0,
        "Share of clients held out of every model (seeded): the non-member reference of the "
        "membership-inference metrics. 0 = none.",
        check=lambda v: 0.0 <= v < 0.5,
        check_doc="in [0, 0.5)",
    )
    resume_from: str = key(
        "",
        "Internal (set by `fedrec unlearn`): a finished run folder whose checkpoint and "
        "kept client state the unlearning starts from instead of training.",
    )


@dataclass(frozen=True)
class AttackConfig:
    kind: str = key(
        "none",
        "Threat model of the run: none; profile pollution by malicious clients (random, "
        "popular, substitution, creat); gradient poisoning of the item rows (gradient, "
        "FedRecAttack-style); malformed (a client that sends broken replies); or a dotted path "
        "'module:Class' of an adversarial client half (fedrec.attacks.roles).",
    )
    fraction: float = key(
        0.01,
        "Share of the clients that are malicious (seeded choice; at least one when > 0).",
        **PROBABILITY,
    )
    client_ids: str = key("", "Explicit malicious client ids ('3,17'); overrides attack.fraction.")
    target: str = key(
        "medium",
        "Target item(s): head, medium or tail (a seeded pick from that popularity third of "
        "the training items), or 0-based item ids ('12,40').",
    )
    budget: int = key(5, "K: most positions a polluted profile changes.", **POSITIVE)
    start_round: int = key(
        1, "First round in which the malicious clients attack (honest before).", **POSITIVE
    )
    refresh: int = key(
        0,
        "Re-optimise the pollution against the latest global model every this many rounds "
        "(0 = once, at attack.start-round).",
        **NON_NEGATIVE,
    )
    inference_victims: float = key(
        0.0,
        "Share of the benign users whose evaluation input sequence the attacker also "
        "pollutes at inference (0 = none).",
        check=lambda v: 0.0 <= v <= 1.0,
        check_doc="in [0, 1]",
    )
    boost: float = key(
        1.0,
        "gradient: norm of the crafted target-row update, in units of the client's median "
        "honest row-update norm.",
        **POSITIVE,
    )


@dataclass(frozen=True)
class DefenseConfig:
    method: str = key(
        "none",
        "Server-side defense wrapped around the strategy's aggregation: none, krum, "
        "multikrum, bulyan, median, trimmed-mean (row-wise for sparse item-row uploads: only "
        "the clients that touched a row vote), norm-clip, anomaly (drop flagged clients).",
        choices=(
            "none",
            "krum",
            "multikrum",
            "bulyan",
            "median",
            "trimmed-mean",
            "norm-clip",
            "anomaly",
        ),
    )
    beta: float = key(
        0.1,
        "Assumed malicious share f/n (Krum, Bulyan) and the share cut from each end "
        "(trimmed-mean).",
        check=lambda v: 0.0 <= v < 0.5,
        check_doc="in [0, 0.5)",
    )
    keep_fraction: float = key(
        0.5, "multikrum: share of a row's voters kept and averaged.", **FRACTION
    )
    clip_norm: float = key(
        0.0,
        "norm-clip: clip each client's update to this L2 norm; 0 = adaptive (the "
        "defense.clip-quantile of the round's update norms).",
        **NON_NEGATIVE,
    )
    clip_quantile: float = key(0.5, "norm-clip: quantile of the adaptive norm.", **FRACTION)
    threshold: float = key(
        3.5, "anomaly: a client whose anomaly score exceeds this is dropped.", **POSITIVE
    )


@dataclass(frozen=True)
class FaultsConfig:
    """Simulated faults (simulation runtimes), drawn per (run seed, round, client/node)."""

    crash: float = key(
        0.0,
        "Probability that a sampled client crashes in a training round: it neither trains "
        "nor replies (its private state is unchanged).",
        **PROBABILITY,
    )
    drop: float = key(
        0.0,
        "Probability that a client's training reply is lost on the way (it trained and kept "
        "its new state; the server never sees the update).",
        **PROBABILITY,
    )
    straggler: float = key(
        0.0,
        "Probability that a sampled client is a straggler, delayed by an exponential time "
        "of mean faults.straggler-delay seconds.",
        **PROBABILITY,
    )
    straggler_delay: float = key(
        30.0, "Mean delay of a straggler, in (simulated) seconds.", **POSITIVE
    )
    deadline: float = key(
        60.0,
        "Round deadline in (simulated) seconds: a straggler whose delay exceeds it is timed "
        "out and its reply discarded.",
        **POSITIVE,
    )
    node_failure: float = key(
        0.0,
        "Probability that a whole node fails in a training round: none of the clients it "
        "hosts replies.",
        **PROBABILITY,
    )
    sleep: bool = key(
        False,
        "Really sleep for a straggler's delay (capped at the deadline) instead of simulating "
        "it: to watch time-outs in wall-clock time.",
    )


@dataclass(frozen=True)
class PrivacyConfig:
    """Differential privacy with a stated epsilon (see fedrec.privacy)."""

    mechanism: str = key(
        "none",
        "none; central (client-level DP: the server clips each client's update and adds "
        "Gaussian noise to the aggregate, row-wise for item-row uploads); local (each client "
        "clips and noises its own upload before it leaves: local DP); dpsgd (sample-level "
        "DP-SGD in each client's local training, through Opacus).",
        choices=("none", "central", "local", "dpsgd"),
    )
    noise_multiplier: float = key(
        1.0,
        "Noise standard deviation in units of the clip norm (central: of the summed clipped "
        "updates; local: of each client's upload; dpsgd: of each batch's summed gradients).",
        **NON_NEGATIVE,
    )
    clip_norm: float = key(
        1.0,
        "L2 clip norm of a client's update (central, local) or of a sample's gradient "
        "(dpsgd); central: 0 = adaptive clipping (Andrew et al. 2021).",
        **NON_NEGATIVE,
    )
    target_quantile: float = key(
        0.5, "Adaptive clipping: quantile of the update norms the clip norm tracks.", **FRACTION
    )
    clip_lr: float = key(
        0.2, "Adaptive clipping: geometric learning rate of the clip norm.", **POSITIVE
    )
    initial_clip_norm: float = key(
        0.1, "Adaptive clipping: the first round's clip norm.", **POSITIVE
    )
    delta: float = key(
        1e-5, "The delta of the reported (epsilon, delta) guarantee.", **OPEN_FRACTION
    )
    accountant: str = key(
        "rdp",
        "Privacy accountant (dp-accounting): rdp (Renyi DP) or pld (privacy loss "
        "distributions, tighter).",
        choices=("rdp", "pld"),
    )


SECTIONS: dict[str, type] = {
    "dataset": DatasetConfig,
    "partition": PartitionConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "strategy": StrategyConfig,
    "runtime": RuntimeConfig,
    "output": OutputConfig,
    "unlearning": UnlearningConfig,
    "attack": AttackConfig,
    "defense": DefenseConfig,
    "faults": FaultsConfig,
    "privacy": PrivacyConfig,
}
# Free-form namespaces validated later by the selected plugin / model.
OPEN_PREFIXES = ("strategy.params.", "model.params.", "unlearning.params.", "attack.params.")


@dataclass(frozen=True)
class RunConfig:
    """The validated experiment configuration (typed sections)."""

    seed: int = key(
        0, "Run seed; every random draw derives from (seed, round, client).", **NON_NEGATIVE
    )
    num_server_rounds: int = key(5, "Federated rounds.", **POSITIVE)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    unlearning: UnlearningConfig = field(default_factory=UnlearningConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    defense: DefenseConfig = field(default_factory=DefenseConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    strategy_params: Mapping[str, Scalar] = field(default_factory=dict)
    model_params: Mapping[str, Scalar] = field(default_factory=dict)
    unlearning_params: Mapping[str, Scalar] = field(default_factory=dict)
    attack_params: Mapping[str, Scalar] = field(default_factory=dict)

    # ------------------------------------------------------------------ views
    def to_flat(self) -> dict[str, Scalar]:
        """The flat key -> value dict (Flower run_config form), defaults included."""
        out: dict[str, Scalar] = {}
        for f in fields(RunConfig):
            value = getattr(self, f.name)
            if f.name in SECTIONS:
                for sf in fields(value):
                    out[f"{f.name}.{_kebab(sf.name)}"] = getattr(value, sf.name)
            elif f.name == "strategy_params":
                out.update({f"strategy.params.{k}": v for k, v in value.items()})
            elif f.name == "model_params":
                out.update({f"model.params.{k}": v for k, v in value.items()})
            elif f.name == "unlearning_params":
                out.update({f"unlearning.params.{k}": v for k, v in value.items()})
            elif f.name == "attack_params":
                out.update({f"attack.params.{k}": v for k, v in value.items()})
            else:
                out[_kebab(f.name)] = value
        return out

    def replace(self, **flat: Scalar) -> RunConfig:
        """A copy with flat keys overridden (validated)."""
        merged = self.to_flat()
        merged.update(flat)
        return validate(merged)

    def to_json(self) -> str:
        """The flat config as JSON (memoised: clients use it as a cache key per message)."""
        cached = self.__dict__.get("_json")
        if cached is None:
            cached = json.dumps(self.to_flat(), indent=2, sort_keys=True)
            object.__setattr__(self, "_json", cached)
        return cached


# --------------------------------------------------------------------------- helpers
def _kebab(name: str) -> str:
    return name.replace("_", "-")


def _snake(name: str) -> str:
    return name.replace("-", "_")


def _type_name(t: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(
        t, str(t)
    )


# Flower's run_config carries integers as 64-bit signed values.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


def _show(value: Any, limit: int = 60) -> str:
    """``repr(value)``, shortened for one-line error messages."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        return f"<{type(value).__name__} with too many digits>"
    return text if len(text) <= limit else text[: limit - 4] + "..." + text[-1]


def coerce(key_name: str, value: Any, typ: Any) -> Any:
    """Coerce a raw value (from TOML, a CLI override or Flower) to ``typ``.

    Integers must fit in 64 bits (Flower's run_config) and numbers must be finite."""
    if isinstance(typ, str):  # postponed annotations
        typ = {"int": int, "float": float, "bool": bool, "str": str}.get(typ, typ)
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif typ is int:
        out: int | None = None
        if number and isinstance(value, numbers.Integral):
            out = int(value)
        elif number and math.isfinite(value) and float(value).is_integer():
            out = int(value)
        elif isinstance(value, str):
            try:
                out = int(value)
            except ValueError:
                pass
        if out is not None:
            if not INT_MIN <= out <= INT_MAX:
                raise ConfigError(
                    f"config key '{key_name}': {_show(value)} is out of range "
                    f"(integers must be in [{INT_MIN}, {INT_MAX}])"
                )
            return out
    elif typ is float:
        out_f: float | None = None
        try:
            if number:
                out_f = float(value)
            elif isinstance(value, str):
                out_f = float(value)
        except (ValueError, OverflowError):
            out_f = math.inf if number else None
        if out_f is not None:
            if not math.isfinite(out_f):
                raise ConfigError(f"config key '{key_name}': {_show(value)} is not a finite number")
            return out_f
    elif typ is str:
        if isinstance(value, str):
            return value
        if number:
            return str(value)
    raise ConfigError(f"config key '{key_name}': {_show(value)} is not {_type_name(typ)}")


def _check(key_name: str, value: Any, meta: Mapping[str, Any]) -> None:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(
            f"config key '{key_name}': {_show(value)} is not allowed; "
            f"allowed values: {', '.join(map(str, choices))}"
        )
    check = meta.get("check")
    if check is not None and not check(value):
        raise ConfigError(
            f"config key '{key_name}': {_show(value)} must be {meta.get('check_doc') or 'valid'}"
        )


def _unknown(key_name: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key_name, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(
        f"unknown config key '{key_name}'{hint}; see `fedrec list --keys` for the allowed keys"
    )


def validate_dataclass(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    """Build ``cls`` (a dataclass of :func:`key` fields) from kebab-case keys."""
    by_kebab = {_kebab(f.name): f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for k, v in values.items():
        f = by_kebab.get(k)
        if f is None:
            raise _unknown(prefix + k, [prefix + n for n in by_kebab])
        value = coerce(prefix + k, v, f.type)
        _check(prefix + k, value, f.metadata)
        kwargs[f.name] = value
    return cls(**kwargs)


def all_keys() -> dict[str, dict[str, Any]]:
    """Every fixed key with its default, type, doc and constraint (for docs and CLI)."""
    out: dict[str, dict[str, Any]] = {}
    for f in fields(RunConfig):
        if f.name in SECTIONS:
            for sf in fields(SECTIONS[f.name]):
                out[f"{f.name}.{_kebab(sf.name)}"] = _describe(sf)
        elif f.name not in (
            "strategy_params",
            "model_params",
            "unlearning_params",
            "attack_params",
        ):
            out[_kebab(f.name)] = _describe(f)
    return out


def _describe(f: dataclasses.Field) -> dict[str, Any]:
    default = f.default
    return {
        "default": default,
        "type": f.type if isinstance(f.type, str) else f.type.__name__,
        "doc": f.metadata.get("doc", ""),
        "choices": f.metadata.get("choices"),
        "constraint": f.metadata.get("check_doc", ""),
    }


# --------------------------------------------------------------------------- loading
def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested tables to dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read an experiment TOML file into a flat dict (not yet validated)."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config file '{path}' is a directory; give an experiment TOML file")
    if not p.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        text = p.read_bytes().decode("utf-8-sig")  # (a UTF-8 byte-order mark is dropped)
    except OSError as exc:
        raise ConfigError(f"config file '{path}' cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file '{path}' is not UTF-8 text (byte {exc.start}); "
            "TOML files must be UTF-8 encoded"
        ) from None
    try:
        tree = tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or an integer with too many digits
        raise ConfigError(f"config file '{path}' is not valid TOML: {exc}") from None
    flat = flatten(tree)
    for k, v in flat.items():
        if isinstance(v, (list, dict)) or not isinstance(v, (int, float, bool, str)):
            raise ConfigError(
                f"config key '{k}' in '{path}': values must be numbers, "
                "booleans or strings (Flower run_config)"
            )
    return flat


def parse_override(text: str) -> tuple[str, Scalar]:
    """Parse one ``key=value`` override; the value uses TOML syntax, else a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value")
    k, raw = text.split("=", 1)
    k, raw = k.strip(), raw.strip()
    if not k:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except ValueError:  # TOMLDecodeError, or an integer with too many digits
        value = raw
    if isinstance(value, (list, dict)):
        raise ConfigError(f"override {text!r}: values must be numbers, booleans or strings")
    return k, value


def validate(flat: Mapping[str, Any]) -> RunConfig:
    """Validate a flat key -> value mapping into a :class:`RunConfig`."""
    top = {
        _kebab(f.name): f
        for f in fields(RunConfig)
        if f.name not in SECTIONS
        and f.name not in ("strategy_params", "model_params", "unlearning_params", "attack_params")
    }
    known = list(all_keys())
    section_values: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    top_kwargs: dict[str, Any] = {}
    strategy_params: dict[str, Scalar] = {}
    model_params: dict[str, Scalar] = {}
    unlearning_params: dict[str, Scalar] = {}
    attack_params: dict[str, Scalar] = {}
    bad_keys = [k for k in flat if not isinstance(k, str)]
    if bad_keys:
        raise ConfigError(f"config key {bad_keys[0]!r} is not a string; keys are dotted names")
    for k in sorted(flat):
        v = flat[k]
        if k.startswith("strategy.params."):
            strategy_params[k[len("strategy.params.") :]] = v
        elif k.startswith("model.params."):
            model_params[k[len("model.params.") :]] = v
        elif k.startswith("unlearning.params."):
            unlearning_params[k[len("unlearning.params.") :]] = v
        elif k.startswith("attack.params."):
            attack_params[k[len("attack.params.") :]] = v
        elif k in top:
            value = coerce(k, v, top[k].type)
            _check(k, value, top[k].metadata)
            top_kwargs[_snake(k)] = value
        elif "." in k and k.split(".", 1)[0] in SECTIONS:
            section, sub = k.split(".", 1)
            section_values[section][sub] = v
        else:
            raise _unknown(k, known)
    sections = {
        s: validate_dataclass(cls, section_values[s], s + ".") for s, cls in SECTIONS.items()
    }
    return RunConfig(
        **top_kwargs,
        **sections,
        strategy_params=strategy_params,
        model_params=model_params,
        unlearning_params=unlearning_params,
        attack_params=attack_params,
    )


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> RunConfig:
    """TOML file (optional) + ``extra`` flat keys + ``key=value`` overrides, validated."""
    flat: dict[str, Any] = load_toml(path) if path else {}
    flat.update(extra or {})
    for text in overrides or []:
        k, v = parse_override(text)
        flat[k] = v
    return validate(flat)
