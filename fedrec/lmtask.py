"""What a ``fedlm`` / ``u2a`` client holds: fact-world documents (pure, no flwr).

Every node rebuilds the world from ``dataset.name = "factworld"`` and
``dataset.options`` (:func:`fedrec.data.registry.load_dataset`), and the client
assignment from the run seed, so nothing about the data travels. Choices:

- ``partition.scheme = "by-person"``: the trained people (forget and retain splits of the
  world) are shuffled with ``derive_seed(seed, "partition")`` and cut into
  ``partition.num-clients`` near-equal groups (``np.array_split``). A person's facts live
  on one client, like a user's data on their device. A client's training documents are
  the world's training corpus (:meth:`FactWorld.training_documents`, repeats included, in
  its seeded order) restricted to its people;
- ``partition.scheme = "iid"``: the corpus's documents are dealt in its seeded order,
  document ``k`` to client ``k mod n``; a person's documents (and a fact's repeats) spread
  over several clients, each of which holds (and, on request, forgets) them. FedAvg
  memorises client-specific facts slowly (each client's update is averaged with others
  that do not contain them; measured: 12 % exact match after 30 rounds x 3 local epochs
  by person, against 100 % centralized after 40 epochs), so the experiments use ``iid``;
- either way, with one client the documents are the centralized corpus in the same order;
- each trained fact is *evaluated* on one client only (the one holding its first
  document), so federated sums count it once; the held-out people are split by person
  over the clients (their test facts);
- the tokenizer is :class:`fedrec.models.causal_lm.WordTokenizer` over the world's
  closed vocabulary; the context is the longest document + 4 (``<bos>``, ``<eos>`` and
  two spare positions for U2A's bad responses, which add a word to an answer).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from fedrec.config import RunConfig, validate_dataclass
from fedrec.errors import ConfigError
from fedrec.seeding import derive_seed
from fedrec.specs.fedlm import MODEL_NAME, CausalLMParams

__all__ = [
    "LMTask",
    "U2ATask",
    "build_model",
    "deal",
    "lm_task",
    "load_model",
    "model_params",
    "u2a_task",
]

SCHEMES = ("by-person", "iid")


@dataclass(frozen=True)
class LMTask:
    world: object  # fedrec.data.factworld.FactWorld
    tok: object  # fedrec.models.causal_lm.WordTokenizer
    context: int
    train_people: tuple[np.ndarray, ...]  # per client: the people it holds documents of
    test_people: tuple[np.ndarray, ...]  # per client
    doc_client: np.ndarray  # the client of every training document (corpus order)
    fact_client: dict  # (person, attribute) -> the client that evaluates the fact
    docs: tuple  # the world's (person, document) training corpus, in its seeded order

    def people(self, client_id: int) -> np.ndarray:
        return self.train_people[client_id]

    def documents(self, client_id: int, forgotten=()) -> list[str]:
        """The client's training documents without those of ``forgotten`` people."""
        gone = {int(u) for u in forgotten}
        return [
            t for (p, t), c in zip(self.docs, self.doc_client) if c == client_id and p not in gone
        ]

    def facts(self, client_id: int, which: str, forgotten=()) -> list:
        """Facts the client *evaluates*: ``train`` (kept trained facts), ``forgot`` (facts
        of ``forgotten`` people) or ``test`` (its held-out people's facts)."""
        gone = {int(u) for u in forgotten}
        if which == "test":
            ppl = set(self.test_people[client_id].tolist())
            return [f for f in self.world.facts if f.person in ppl]  # type: ignore[attr-defined]
        keep = (lambda p: p not in gone) if which == "train" else (lambda p: p in gone)
        return [
            f
            for f in self.world.facts  # type: ignore[attr-defined]
            if self.fact_client.get((f.person, f.attribute)) == client_id and keep(f.person)
        ]

    def held_facts(self, client_id: int, which: str = "kept", forgotten=()) -> list:
        """Every distinct fact the client holds a document of (its local data): ``kept``
        (not of ``forgotten`` people) or ``forgot`` (of them). What it keeps or unlearns,
        unlike :meth:`facts`, which counts each fact once over the federation."""
        gone = {int(u) for u in forgotten}
        mine = set(self.documents(client_id))
        want = (lambda p: p not in gone) if which == "kept" else (lambda p: p in gone)
        return [
            f
            for f in self.world.facts  # type: ignore[attr-defined]
            if want(f.person) and f"{f.question} {f.answer}" in mine
        ]


def _split(people: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    return tuple(np.sort(a) for a in np.array_split(rng.permutation(people), n))


def deal(doc_people, trained, num_clients: int, seed: int, scheme: str):
    """``(people per client, client per document)`` under ``scheme`` (module docstring)."""
    if scheme == "by-person":
        groups = _split(np.asarray(trained), num_clients, seed)
        owner = {int(p): c for c, g in enumerate(groups) for p in g}
        return groups, np.asarray([owner[int(p)] for p in doc_people], dtype=np.int64)
    if scheme == "iid":
        doc_client = np.arange(len(doc_people), dtype=np.int64) % num_clients
        people = np.asarray(doc_people, dtype=np.int64)
        return tuple(np.unique(people[doc_client == k]) for k in range(num_clients)), doc_client
    raise ConfigError(
        f"config key 'partition.scheme': '{scheme}' does not apply to the fact world; "
        f"allowed: {', '.join(SCHEMES)}"
    )


@functools.lru_cache(maxsize=4)
def _task(name: str, options: str, num_clients: int, seed: int, scheme: str) -> LMTask:
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
    docs = world.training_documents()
    # <bos> + words + <eos>, plus 2 spare positions: U2A's bad responses add a word
    ctx = max(len(t.split()) for _, t in docs) + 4
    ctx = max(ctx, max(len((f.question + " " + f.answer).split()) for f in world.facts) + 4)
    s = derive_seed(seed, "partition") % 2**63
    groups, doc_client = deal([p for p, _ in docs], trained, num_clients, s, scheme)
    key_of = {f"{f.question} {f.answer}": (f.person, f.attribute) for f in world.facts}
    fact_client: dict = {}
    for (_, t), c in zip(docs, doc_client):
        fact_client.setdefault(key_of[t], int(c))
    return LMTask(
        world,
        tok,
        ctx,
        groups,
        _split(held, num_clients, s + 1),
        doc_client,
        fact_client,
        tuple(docs),
    )


def lm_task(cfg: RunConfig) -> LMTask:
    """The run's :class:`LMTask` (cached per process)."""
    p = cfg.partition
    return _task(cfg.dataset.name, cfg.dataset.options, p.num_clients, cfg.seed, p.scheme)


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


def load_model(cfg: RunConfig, weights):
    """:func:`build_model` holding ``weights`` (parameter order), in evaluation mode."""
    from fedrec.models import set_weights

    model = build_model(cfg)
    set_weights(model, [np.asarray(w, dtype=np.float32) for w in weights])
    return model.eval()


# ------------------------------------------------------------------ U2A's assistant task
@dataclass(frozen=True)
class U2ATask:
    """The assistant corpus over the run's fact world, split over the clients like
    :class:`LMTask` (``by-person``: a person's SFT documents and negatives on the person's
    client; ``iid``: SFT documents and negatives each dealt ``k mod n`` in their seeded
    order). Each client fine-tunes on its SFT documents and holds its candidate negatives;
    the server holds the preference validation set."""

    lm: LMTask
    corpus: object  # fedrec.data.factworld.AssistantCorpus
    sft_client: np.ndarray
    neg_client: np.ndarray

    def documents(self, client_id: int) -> list[str]:
        sft = self.corpus.sft  # type: ignore[attr-defined]
        return [d for (_, d), c in zip(sft, self.sft_client) if c == client_id]

    def negatives(self, client_id: int) -> list:
        negs = self.corpus.negatives  # type: ignore[attr-defined]
        return [n for n, c in zip(negs, self.neg_client) if c == client_id]

    def chosen(self, client_id: int) -> list[tuple[str, str]]:
        """The (prompt, chosen answer) pairs of the client's SFT documents: what it keeps."""
        mine = set(self.documents(client_id))
        return [(q, a) for q, a in self.corpus.chosen if f"{q} {a}" in mine]  # type: ignore[attr-defined]

    def prompts(self, client_id: int) -> list[tuple[str, str]]:
        """The (prompt, chosen answer) pairs the client evaluates (each prompt once over
        the federation, :meth:`LMTask.facts`)."""
        return [(f.question, f.answer) for f in self.lm.facts(client_id, "train")]


@functools.lru_cache(maxsize=4)
def _u2a_task(
    name: str,
    options: str,
    num_clients: int,
    seed: int,
    scheme: str,
    negatives_per_prompt: int,
    harmful_fraction: float,
    validation_fraction: float,
    chosen_repeats: int,
) -> U2ATask:
    from fedrec.data.factworld import make_assistant_corpus

    lm = _task(name, options, num_clients, seed, scheme)
    corpus = make_assistant_corpus(
        lm.world,  # type: ignore[arg-type]
        negatives_per_prompt=negatives_per_prompt,
        harmful_fraction=harmful_fraction,
        validation_fraction=validation_fraction,
        chosen_repeats=chosen_repeats,
        seed=derive_seed(seed, "assistant") % 2**32,
    )
    s = derive_seed(seed, "partition") % 2**63
    trained = np.flatnonzero(lm.world.person_split != 2)  # type: ignore[attr-defined]
    _, sft_client = deal([p for p, _ in corpus.sft], trained, num_clients, s, scheme)
    _, neg_client = deal([n.person for n in corpus.negatives], trained, num_clients, s, scheme)
    return U2ATask(lm, corpus, sft_client, neg_client)


def u2a_task(cfg: RunConfig, params) -> U2ATask:
    """The run's :class:`U2ATask` (``params``: the ``u2a`` strategy's Params)."""
    return _u2a_task(
        cfg.dataset.name,
        cfg.dataset.options,
        cfg.partition.num_clients,
        cfg.seed,
        cfg.partition.scheme,
        params.negatives_per_prompt,
        params.harmful_fraction,
        params.validation_fraction,
        params.chosen_repeats,
    )
