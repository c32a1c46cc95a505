"""Spec of ``fedmf`` (federated MF-BPR): Params, state field, actions, uploads."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrec.config import key
from fedrec.messages import RowSparse


@dataclass(frozen=True)
class FedMFParams:
    dim: int = key(64, "Embedding dimension d.", check=lambda v: v >= 1, check_doc=">= 1")
    negatives: int = key(
        1,
        "Sampled negatives per positive per local epoch.",
        check=lambda v: v >= 1,
        check_doc=">= 1",
    )
    reg: float = key(
        0.0, "L2 regularisation of the BPR objective.", check=lambda v: v >= 0, check_doc=">= 0"
    )
    init_std: float = key(
        0.1,
        "Std of the Gaussian initialisation of P and Q.",
        check=lambda v: v > 0,
        check_doc="> 0",
    )
    users_per_client: int = key(
        1,
        "Users per logical client (1 = one client per user, as FedRec/FCF; larger = cross-silo).",
        check=lambda v: v >= 1,
        check_doc=">= 1",
    )
    aggregation: str = key(
        "sparse",
        "sparse: per-row mean over the users that touched the "
        "row; dense: FedAvg of full item matrices (baseline).",
        choices=("sparse", "dense"),
    )
    server_lr: float = key(
        1.0, "Multiplier of the aggregated item-row delta.", check=lambda v: v > 0, check_doc="> 0"
    )
    server_lr_final: float = key(
        0.0,
        "If > 0, the server lr decays linearly from server-lr "
        "in round 1 to this value in the last round (0 = constant).",
        check=lambda v: v >= 0,
        check_doc=">= 0",
    )
    server_optimizer: str = key(
        "sgd",
        "sgd: Q += server-lr * per-row mean delta; adam: lazy "
        "(sparse) Adam on the per-row mean delta, only touched rows "
        "step (FedAdam, Reddi et al. 2021), betas (0.9, 0.999).",
        choices=("sgd", "adam"),
    )
    release_embeddings: bool = key(
        False,
        "After the last round, ask clients to release "
        "their user embeddings (saved as embeddings.npz) and save "
        "the last round's uploads (uploads.npz), for the attack "
        "suite's threat models. Off by default.",
    )


# state field (private, never sent): the client's user embeddings, (n_users, dim) float32
P = "P"
# query action: the opt-in embedding release (threat model "released embeddings")
RELEASE = "fedmf_release"
# unlearning actions (fedrec.unlearning): the GradDiff upload of forgetting clients and
# the influence statistics (config "op": grad | hess); both reply like train
UNLEARN_ASCENT = "unlearn_ascent"
UNLEARN_INFLUENCE = "unlearn_influence"
# train config key (optional): local epochs of this phase (FedEraser's calibration)
LOCAL_EPOCHS = "local-epochs"
# metric keys of the train reply
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"


def pack_train(upload: RowSparse) -> list[np.ndarray]:
    """Sparse train upload: ``[ids, delta_sum, counts]`` of the touched item rows."""
    return upload.to_arrays()


def unpack_train(arrays: list[np.ndarray]) -> RowSparse:
    return RowSparse.from_arrays(arrays)


def pack_release(users: np.ndarray, embeddings: np.ndarray) -> list[np.ndarray]:
    """Release reply: ``[user ids (n,) int64, embeddings (n, dim) float32]``."""
    return [np.asarray(users, dtype=np.int64), np.asarray(embeddings, dtype=np.float32)]


def unpack_release(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(arrays[0], dtype=np.int64), np.asarray(arrays[1])
