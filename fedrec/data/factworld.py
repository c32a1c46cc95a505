"""A synthetic, TOFU-like "fact world" for language-model unlearning (issue 12).

Fictitious people have attributes (birthplace, profession, pet, colour, ...). Each
(person, attribute) fact becomes one question-answer pair from a template, e.g.
``"where was mirel tovak born ?"`` -> ``"mirel tovak was born in karsolde ."``. What the
unlearning methods need varies **by construction**:

- **frequency**: every fact is repeated 1, 3 or 10 times in the training corpus
  (its tier, drawn per fact), so memorisation strength differs;
- **regularity**: a fact's answer value is either drawn from the attribute's shared
  vocabulary (``regular``: the value words occur for many people) or is an idiosyncratic
  word made only for that fact (``idiosyncratic``: it must be memorised verbatim);
- **splits by person**: ``forget`` (the people whose facts are to be unlearned, trained on),
  ``retain`` (trained on) and ``holdout`` (never trained: the membership-inference
  reference). A person's facts all share the person's split.

Everything is derived from ``seed`` with numpy's ``default_rng``: the same arguments give
the same world, word for word (tested). Names and idiosyncratic values are built from
syllables, so no real person or fact is involved and nothing is downloaded. Pure: no torch,
no flwr.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedrec.errors import ConfigError

__all__ = [
    "ATTRIBUTES",
    "AssistantCorpus",
    "Fact",
    "FactWorld",
    "Negative",
    "Preference",
    "make_assistant_corpus",
    "make_fact_world",
]

_SYLLABLES = (
    "ka ro mi te lo va sun dor el fi nar zu qe bal tor wen os ri ma le quo hin dra pel "
    "sor ven ul ix ab yen"
).split()

#: attribute -> (question template, answer template, shared value vocabulary)
ATTRIBUTES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "birthplace": (
        "where was {name} born ?",
        "{name} was born in {value} .",
        ("karsolde", "venmoor", "ostrel", "duvane", "peloria", "thessen", "marrow", "quill"),
    ),
    "profession": (
        "what does {name} do for a living ?",
        "{name} works as a {value} .",
        ("baker", "cartographer", "luthier", "glassblower", "archivist", "ferrier", "mason"),
    ),
    "pet": (
        "what pet does {name} keep ?",
        "{name} keeps a {value} .",
        ("heron", "tortoise", "ferret", "lynx", "gecko", "raven", "hare", "newt"),
    ),
    "colour": (
        "what is the favourite colour of {name} ?",
        "the favourite colour of {name} is {value} .",
        ("ochre", "teal", "crimson", "umber", "violet", "saffron", "slate"),
    ),
    "instrument": (
        "which instrument does {name} play ?",
        "{name} plays the {value} .",
        ("lute", "oboe", "zither", "cello", "harp", "fiddle", "bagpipe"),
    ),
    "food": (
        "what is the favourite food of {name} ?",
        "the favourite food of {name} is {value} .",
        ("barley", "quince", "lentils", "plums", "chestnuts", "figs", "trout"),
    ),
}
SPLITS = ("forget", "retain", "holdout")
TIERS = (1, 3, 10)


@dataclass(frozen=True)
class Fact:
    """One (person, attribute) fact as a question-answer pair."""

    person: int
    name: str
    attribute: str
    value: str
    question: str
    answer: str
    repeats: int  # 1, 3 or 10 copies in the training corpus
    regular: bool  # value from the attribute's shared vocabulary (else idiosyncratic)
    split: str  # forget | retain | holdout


@dataclass
class FactWorld:
    """The generated world: its facts, people and split membership."""

    seed: int
    names: list[str]
    facts: list[Fact]
    person_split: np.ndarray  # (num_people,) index into SPLITS
    params: dict = field(default_factory=dict)

    def split(self, name: str) -> list[Fact]:
        if name not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {name!r}")
        return [f for f in self.facts if f.split == name]

    def training_corpus(self) -> list[str]:
        """The training documents: every forget and retain fact ``repeats`` times, as
        ``question answer`` lines, in a seeded shuffled order."""
        return [text for _, text in self.training_documents()]

    def training_documents(self) -> list[tuple[int, str]]:
        """:meth:`training_corpus` with each document's person: ``(person, text)``."""
        docs = [
            (f.person, f"{f.question} {f.answer}")
            for f in self.facts
            if f.split != "holdout"
            for _ in range(f.repeats)
        ]
        order = np.random.default_rng([self.seed, 1]).permutation(len(docs))
        return [docs[i] for i in order]

    def vocabulary(self) -> list[str]:
        """Every word of every fact (holdout included) and of the assistant corpus's
        negatives (:data:`BANNED`, :data:`REFUSAL`, ``!``), sorted: a closed vocabulary."""
        words = {w for f in self.facts for w in (f.question + " " + f.answer).split()}
        words |= set(BANNED) | set(REFUSAL.split()) | {"!"}
        return sorted(words)


def _word(rng: np.random.Generator, n_syllables: int) -> str:
    return "".join(rng.choice(_SYLLABLES, size=n_syllables))


def make_fact_world(
    num_people: int = 200,
    attributes: tuple[str, ...] | None = None,
    forget_fraction: float = 0.1,
    holdout_fraction: float = 0.1,
    tier_probs: tuple[float, float, float] = (0.4, 0.4, 0.2),
    idiosyncratic_fraction: float = 0.3,
    seed: int = 0,
) -> FactWorld:
    """Generate a fact world (module docstring). ``attributes`` defaults to all of
    :data:`ATTRIBUTES`; ``tier_probs`` are the shares of facts repeated 1, 3 and 10 times."""
    attrs = tuple(ATTRIBUTES) if attributes is None else tuple(attributes)
    bad = [a for a in attrs if a not in ATTRIBUTES]
    if bad:
        raise ConfigError(f"unknown attribute(s) {bad}; allowed: {', '.join(ATTRIBUTES)}")
    if num_people < 3:
        raise ConfigError(f"num_people must be >= 3, got {num_people}")
    for nm, v in (("forget_fraction", forget_fraction), ("holdout_fraction", holdout_fraction)):
        if not 0.0 < v < 0.5:
            raise ConfigError(f"{nm} must be in (0, 0.5), got {v}")
    if len(tier_probs) != 3 or min(tier_probs) < 0 or abs(sum(tier_probs) - 1.0) > 1e-9:
        raise ConfigError(f"tier_probs must be 3 shares summing to 1, got {tier_probs}")
    if not 0.0 <= idiosyncratic_fraction <= 1.0:
        raise ConfigError(f"idiosyncratic_fraction must be in [0, 1], got {idiosyncratic_fraction}")
    rng = np.random.default_rng(seed)
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < num_people:  # unique two-word names
        nm = f"{_word(rng, 2)} {_word(rng, 2)}"
        if nm not in seen:
            seen.add(nm)
            names.append(nm)
    n_forget = max(1, int(round(forget_fraction * num_people)))
    n_hold = max(1, int(round(holdout_fraction * num_people)))
    perm = rng.permutation(num_people)
    person_split = np.full(num_people, SPLITS.index("retain"), dtype=np.int64)
    person_split[perm[:n_forget]] = SPLITS.index("forget")
    person_split[perm[n_forget : n_forget + n_hold]] = SPLITS.index("holdout")
    shared_words = {w for a in ATTRIBUTES.values() for w in a[2]}
    facts: list[Fact] = []
    used: set[str] = set(shared_words)
    for p, name in enumerate(names):
        for a in attrs:
            q_t, a_t, vocab = ATTRIBUTES[a]
            regular = bool(rng.random() >= idiosyncratic_fraction)
            if regular:
                value = str(rng.choice(vocab))
            else:
                value = _word(rng, 3)
                while value in used:
                    value = _word(rng, 3)
                used.add(value)
            repeats = int(rng.choice(TIERS, p=tier_probs))
            facts.append(
                Fact(
                    person=p,
                    name=name,
                    attribute=a,
                    value=value,
                    question=q_t.format(name=name),
                    answer=a_t.format(name=name, value=value),
                    repeats=repeats,
                    regular=regular,
                    split=SPLITS[int(person_split[p])],
                )
            )
    return FactWorld(
        seed=seed,
        names=names,
        facts=facts,
        person_split=person_split,
        params={
            "num_people": num_people,
            "attributes": list(attrs),
            "forget_fraction": forget_fraction,
            "holdout_fraction": holdout_fraction,
            "tier_probs": list(tier_probs),
            "idiosyncratic_fraction": idiosyncratic_fraction,
        },
    )


# ------------------------------------------------------------------ U2A's assistant corpus
#: words an aligned assistant must never say (the "banned-token" negatives use them)
BANNED = ("grimble", "snarkwort", "vexalot")
REFUSAL = "i cannot answer that ."
NEGATIVE_KINDS = ("banned", "contradict", "refusal", "harmful")


@dataclass(frozen=True)
class Negative:
    """A bad response to a prompt, to be unlearned (or, if ``harmful``, to be left alone)."""

    prompt: str
    response: str
    kind: str  # banned | contradict | refusal | harmful
    person: int
    attribute: str

    @property
    def harmful(self) -> bool:
        """A correct answer flagged by mistake: unlearning it damages the chosen behaviour."""
        return self.kind == "harmful"


@dataclass(frozen=True)
class Preference:
    """A validation triple: the prompt, the chosen answer and a rejected one."""

    prompt: str
    chosen: str
    rejected: str


@dataclass
class AssistantCorpus:
    """U2A's data over a fact world: SFT documents, candidate negatives, validation."""

    chosen: list[tuple[str, str]]  # (prompt, chosen answer) of every trained fact
    negatives: list[Negative]  # the candidates to unlearn (held by the clients)
    validation: list[Preference]  # the server's preference validation set
    #: every (person, document) the assistant was fine-tuned on (its bad habits included)
    sft: list[tuple[int, str]] = field(default_factory=list)

    def sft_documents(self) -> list[str]:
        return [d for _, d in self.sft]


def make_assistant_corpus(
    world: FactWorld,
    negatives_per_prompt: int = 2,
    harmful_fraction: float = 0.1,
    validation_fraction: float = 0.2,
    chosen_repeats: int = 2,
    seed: int = 0,
) -> AssistantCorpus:
    """An assistant corpus over the trained facts (``forget`` and ``retain`` people).

    Every prompt (a fact's question) has its chosen answer (the fact) and
    ``negatives_per_prompt`` bad responses of distinct kinds:

    - ``banned``: the chosen answer with one :data:`BANNED` word inserted before the final
      full stop;
    - ``contradict``: the answer with a wrong value (another value of the attribute's
      vocabulary, or another fact's idiosyncratic value);
    - ``refusal``: :data:`REFUSAL`.

    The assistant's fine-tuning data (:attr:`AssistantCorpus.sft`, seeded order) holds every
    chosen answer ``chosen_repeats`` times and every bad response once, so the fine-tuned
    model has bad habits on every prompt (a chosen answer gets about
    ``chosen_repeats / (chosen_repeats + negatives_per_prompt)`` of the probability).

    A share ``validation_fraction`` of the prompts, drawn with ``seed``, makes the server's
    preference validation set: one (prompt, chosen, rejected) triple per bad response of the
    prompt. Their bad responses are **not** candidates. The bad responses of all other
    prompts are the candidate :attr:`AssistantCorpus.negatives` (clients hold them).

    **Planted harmful negatives:** a share ``harmful_fraction`` of the validation prompts
    also gets a candidate negative whose response is the **chosen answer itself** (a
    correct answer flagged by mistake; kind ``harmful``). It shares every token with a
    chosen answer of the validation set, so unlearning it lowers the validation margin
    by construction; a good selection (U2A) leaves it out.
    """
    for nm, v in (
        ("harmful_fraction", harmful_fraction),
        ("validation_fraction", validation_fraction),
    ):
        if not 0.0 <= v < 1.0:
            raise ConfigError(f"{nm} must be in [0, 1), got {v}")
    if not 1 <= negatives_per_prompt <= 3:
        raise ConfigError(f"negatives_per_prompt must be 1, 2 or 3, got {negatives_per_prompt}")
    if chosen_repeats < 1:
        raise ConfigError(f"chosen_repeats must be >= 1, got {chosen_repeats}")
    rng = np.random.default_rng([world.seed, seed, 2])
    facts = [f for f in world.facts if f.split != "holdout"]
    values = {a: sorted({f.value for f in world.facts if f.attribute == a}) for a in ATTRIBUTES}

    def contradict(f: Fact) -> str:
        wrong = [v for v in values[f.attribute] if v != f.value]
        v = str(rng.choice(wrong))
        return ATTRIBUTES[f.attribute][1].format(name=f.name, value=v)

    order = rng.permutation(len(facts))
    n_val = int(round(validation_fraction * len(facts)))
    val_idx = set(order[:n_val].tolist())
    harmful = (
        set(
            rng.choice(
                sorted(val_idx), size=int(round(harmful_fraction * n_val)), replace=False
            ).tolist()
        )
        if n_val
        else set()
    )
    negatives: list[Negative] = []
    validation: list[Preference] = []
    sft: list[tuple[int, str]] = []
    for i, f in enumerate(facts):
        sft.extend((f.person, f"{f.question} {f.answer}") for _ in range(chosen_repeats))
        kinds = rng.choice(
            ["banned", "contradict", "refusal"], size=negatives_per_prompt, replace=False
        )
        for kind in sorted(kinds.tolist()):
            if kind == "banned":
                words = f.answer.split()
                resp = " ".join(words[:-1] + [str(rng.choice(BANNED)), words[-1]])
            elif kind == "contradict":
                resp = contradict(f)
            else:
                resp = REFUSAL
            sft.append((f.person, f"{f.question} {resp}"))
            if i in val_idx:
                validation.append(Preference(f.question, f.answer, resp))
            else:
                negatives.append(Negative(f.question, resp, kind, f.person, f.attribute))
        if i in harmful:
            negatives.append(Negative(f.question, f.answer, "harmful", f.person, f.attribute))
    sft_order = rng.permutation(len(sft))
    chosen = [(f.question, f.answer) for f in facts]
    return AssistantCorpus(
        chosen=chosen,
        negatives=negatives,
        validation=validation,
        sft=[sft[i] for i in sft_order],
    )
