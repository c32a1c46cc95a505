"""What a ``fedlm`` client holds: the fact world's documents of its people (pure, no flwr).

Every node rebuilds the world from ``dataset.name = "factworld"`` and
``dataset.options`` (:func:`fedrec.data.registry.load_dataset`), and the client/person
assignment from the run seed, so nothing about the data travels. Choices:

- the trained people (forget and retain splits of the world) are shuffled with
  ``derive_seed(seed, "partition")`` and cut into ``partition.num-clients`` near-equal
  groups (``np.array_split``); the held-out people likewise, as the clients' test facts.
  A person's facts therefore live on one client, like a user's data on their device;
- a client's training documents are the world's training corpus (:meth:`FactWorld.
  training_documents`, repeats included, in its seeded order) restricted to its people,
  so with one client they are the centralized corpus in the same order;
- the tokenizer is :class:`fedrec.models.causal_lm.WordTokenizer` over the world's
  closed vocabulary; the context is the longest training document (+ ``<bos>``/``<eos>``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from fedrec.config import RunConfig, validate_dataclass
from fedrec.errors import ConfigError
from fedrec.seeding import derive_seed
from fedrec.specs.fedlm import MODEL_NAME, CausalLMParams

__all__ = ["LMTask", "lm_task", "model_params", "build_model"]


@dataclass(frozen=True)
class LMTask:
    world: object  # fedrec.data.factworld.FactWorld
    tok: object  # fedrec.models.causal_lm.WordTokenizer
    context: int
    train_people: tuple[np.ndarray, ...]  # per client
    test_people: tuple[np.ndarray, ...]  # per client

    def people(self, client_id: int) -> np.ndarray:
        return self.train_people[client_id]

    def documents(self, client_id: int, forgotten=()) -> list[str]:
        """The client's training documents without those of ``forgotten`` people."""
        mine = set(self.train_people[client_id].tolist()) - {int(u) for u in forgotten}
        return [t for p, t in self.world.training_documents() if p in mine]  # type: ignore[attr-defined]

    def facts(self, client_id: int, which: str, forgotten=()) -> list:
        """``train`` (kept trained facts), ``forgot`` (facts of ``forgotten`` people) or
        ``test`` (the client's held-out people's facts)."""
        gone = {int(u) for u in forgotten}
        if which == "test":
            ppl = set(self.test_people[client_id].tolist())
            return [f for f in self.world.facts if f.person in ppl]  # type: ignore[attr-defined]
        ppl = set(self.train_people[client_id].tolist())
        keep = (lambda p: p not in gone) if which == "train" else (lambda p: p in gone)
        return [f for f in self.world.facts if f.person in ppl and keep(f.person)]  # type: ignore[attr-defined]


def _split(people: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    return tuple(np.sort(a) for a in np.array_split(rng.permutation(people), n))


@functools.lru_cache(maxsize=4)
def _task(name: str, options: str, num_clients: int, seed: int) -> LMTask:
    from fedrec.data.registry import load_dataset
    from fedrec.models.causal_lm import WordTokenizer
    from fedrec.recsys.data import parse_options

    world = load_dataset(name, **parse_options(options))
    if type(world).__name__ != "FactWorld":
        raise ConfigError(
            f"config key 'dataset.name': '{name}' is not a text dataset; fedlm needs factworld"
        )
    split = world.person_split
    trained = np.flatnonzero(split != 2)
    held = np.flatnonzero(split == 2)
    if num_clients > len(trained):
        raise ConfigError(
            f"config key 'partition.num-clients': {num_clients} exceeds the "
            f"{len(trained)} trained people of the fact world"
        )
    tok = WordTokenizer(world.vocabulary())
    ctx = max(len(t.split()) for _, t in world.training_documents()) + 2
    ctx = max(ctx, max(len((f.question + " " + f.answer).split()) for f in world.facts) + 2)
    s = derive_seed(seed, "partition") % 2**63
    return LMTask(
        world, tok, ctx, _split(trained, num_clients, s), _split(held, num_clients, s + 1)
    )


def lm_task(cfg: RunConfig) -> LMTask:
    """The run's :class:`LMTask` (cached per process)."""
    return _task(cfg.dataset.name, cfg.dataset.options, cfg.partition.num_clients, cfg.seed)


def model_params(cfg: RunConfig) -> CausalLMParams:
    if cfg.model.name != MODEL_NAME:
        raise ConfigError(
            f"config key 'model.name': '{cfg.model.name}' is not a language model; "
            f"fedlm needs '{MODEL_NAME}'"
        )
    p = validate_dataclass(CausalLMParams, dict(cfg.model_params), "model.params.")
    if p.d_model % p.n_heads:
        raise ConfigError(
            f"config key 'model.params.n-heads': {p.n_heads} does not divide d-model={p.d_model}"
        )
    return p


def build_model(cfg: RunConfig):
    """The global model before round 1 (seeded by the run seed only)."""
    from fedrec.models.causal_lm import CausalLM

    p, t = model_params(cfg), lm_task(cfg)
    return CausalLM(
        len(t.tok),  # type: ignore[arg-type]
        p.d_model,
        p.n_layers,
        p.n_heads,
        t.context,
        seed=derive_seed(cfg.seed, "init") % 2**63,
    )
