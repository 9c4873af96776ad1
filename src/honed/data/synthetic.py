"""Synthetic task families whose exact-match score shows real learning within minutes.

Each family turns a seeded random generator into (user prompt, assistant answer) pairs
with short answers, so that exact match is a meaningful score even for a ~1M-parameter
model on two CPU cores. The tiny base (`honed.models.tiny`) is pretrained on some
families; the others are new skills a LoRA adapter can be seen to learn.

    >>> generate("arithmetic", 1, seed=0)[0]["messages"][0]["content"]  # doctest: +SKIP
    '49+97='

Records are chat records, the shape honed ingests:
``{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}``. For preference
training, ``write_synthetic(..., kind=...)`` writes the training split as pairs
(``preference``: chosen the right answer, rejected a near miss) or as labelled single
answers (``unpaired``: right answers labelled true, near misses false, alternating).
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from honed.atomic_files import write_bytes_atomically

__all__ = [
    "FAMILIES",
    "RECORD_KINDS",
    "Family",
    "as_kind",
    "chat_record",
    "eval_path_for",
    "generate",
    "get_family",
    "near_miss",
    "pairs",
    "write_synthetic",
]

_LETTERS = string.ascii_lowercase


@dataclass(frozen=True)
class Family:
    """One synthetic task: a name, what it asks, and a seeded pair sampler."""

    name: str
    description: str
    sample: Callable[[random.Random], tuple[str, str]]
    """Draws one (user prompt, assistant answer) pair from the generator."""
    distinct_prompts: int
    """How many different prompts the family can produce (caps `generate`'s n)."""


def _word(rng: random.Random, min_len: int, max_len: int) -> str:
    return "".join(rng.choices(_LETTERS, k=rng.randint(min_len, max_len)))


def _arithmetic(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"{a}+{b}=", str(a + b)


def _copy(rng: random.Random) -> tuple[str, str]:
    word = _word(rng, 4, 8)
    return f"copy: {word}", word


# 3-6 letters (not 4-8): short enough that a LoRA adapter on the tiny base goes from 0%
# to well above 40% exact match in about a minute on two cores (see honed.models.tiny).
REVERSAL_LENGTHS = (3, 6)


def _reversal(rng: random.Random) -> tuple[str, str]:
    word = _word(rng, *REVERSAL_LENGTHS)
    return f"reverse: {word}", word[::-1]


def _shift(rng: random.Random) -> tuple[str, str]:
    word = _word(rng, 4, 8)
    return f"shift: {word}", "".join(_LETTERS[(_LETTERS.index(c) + 1) % 26] for c in word)


def _kv_recall(rng: random.Random) -> tuple[str, str]:
    keys = rng.sample(_LETTERS, rng.randint(3, 4))
    values = {key: str(rng.randint(0, 9)) for key in keys}
    query = rng.choice(keys)
    facts = " ".join(f"{key}={values[key]}" for key in keys)
    return f"{facts}; {query}?", values[query]


def _json_extract(rng: random.Random) -> tuple[str, str]:
    name, age = _word(rng, 2, 4), rng.randint(10, 99)
    return f"name: {name} age: {age} -> json", json.dumps(
        {"name": name, "age": age}, separators=(",", ":")
    )


_FIRST_NAMES = ("Ida", "Omar", "Lena", "Ravi", "Mara", "Yuki", "Tomas", "Nia", "Pablo", "Sofia", "Emeka",
                "Hana", "Liam", "Zara", "Arjun", "Elsa", "Kofi", "Mei", "Jonas", "Amira")
_LAST_NAMES = ("Khan", "Berg", "Silva", "Novak", "Okafor", "Tanaka", "Moreau", "Rossi", "Larsen", "Haddad",
               "Kowalski", "Mendes", "Singh", "Fischer", "Adeyemi", "Costa", "Jensen", "Park", "Weber", "Lopez")
_JOBS = ("pilot", "baker", "nurse", "teacher", "plumber", "architect", "chemist", "farmer", "lawyer", "painter",
         "dentist", "librarian", "carpenter", "journalist", "engineer", "florist")
_CITIES = ("Oslo", "Lima", "Cairo", "Lyon", "Porto", "Osaka", "Quito", "Accra", "Perth", "Bergen", "Leeds",
           "Graz", "Turin", "Hanoi", "Dakar", "Austin")
_PERSON_PHRASINGS = (
    "Meet {name}: a {age}-year-old {job} from {city}.",
    "{name} ({age}), {job}, lives in {city}.",
    "In {city} lives {name}, {age}, whose job is {job}.",
    "Our new {job}, {name}, is {age} years old and comes from {city}.",
)
PERSON_JSON_INSTRUCTION = "Extract the person as JSON with the keys name, age, job and city."


def _person_json(rng: random.Random) -> tuple[str, str]:
    name = f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}"
    age, job, city = rng.randint(18, 80), rng.choice(_JOBS), rng.choice(_CITIES)
    sentence = rng.choice(_PERSON_PHRASINGS).format(name=name, age=age, job=job, city=city)
    answer = json.dumps({"name": name, "age": age, "job": job, "city": city}, separators=(",", ":"))
    return f"{PERSON_JSON_INSTRUCTION}\n{sentence}", answer


def _count(lengths: tuple[int, int], alphabet: int = 26) -> int:
    return sum(alphabet**k for k in range(lengths[0], lengths[1] + 1))


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("arithmetic", "two-digit addition: '27+58=' -> '85'", _arithmetic, 90 * 90),
        Family("copy", "copy a 4-8 letter word: 'copy: abcde' -> 'abcde'", _copy, _count((4, 8))),
        Family(
            "reversal",
            "reverse a 3-6 letter word: 'reverse: abcde' -> 'edcba'",
            _reversal,
            _count(REVERSAL_LENGTHS),
        ),
        Family(
            "shift",
            "move each letter of a 4-8 letter word one on in the alphabet: 'shift: abcz' -> 'bcda'",
            _shift,
            _count((4, 8)),
        ),
        Family(
            "kv_recall",
            "recall a value by key: 'a=3 c=7 d=1; c?' -> '7'",
            _kv_recall,
            # lower bound: 3 distinct keys in order, 10 values each, 3 choices of query
            26 * 25 * 24 * 1000 * 3,
        ),
        Family(
            "json_extract",
            "fields to JSON: 'name: ann age: 31 -> json' -> '{\"name\":\"ann\",\"age\":31}'",
            _json_extract,
            _count((2, 4)) * 90,
        ),
        Family(
            "person_json",
            "a sentence about a person to fixed-schema JSON (for real models such as SmolLM2): "
            "'Meet Ida Khan: a 57-year-old pilot from Oslo.' -> "
            "'{\"name\":\"Ida Khan\",\"age\":57,\"job\":\"pilot\",\"city\":\"Oslo\"}'",
            _person_json,
            len(_FIRST_NAMES) * len(_LAST_NAMES) * 63 * len(_JOBS) * len(_CITIES) * len(_PERSON_PHRASINGS),
        ),
    )
}


def get_family(name: str) -> Family:
    """Return the family called `name`; a ValueError names the allowed families."""
    try:
        return FAMILIES[name]
    except KeyError:
        allowed = ", ".join(sorted(FAMILIES))
        raise ValueError(f"unknown synthetic family {name!r}; allowed: {allowed}") from None


def pairs(family: str, seed: int = 0) -> Iterator[tuple[str, str]]:
    """Endless (prompt, answer) pairs of `family`, deterministic for `seed`, repeats allowed."""
    sample = get_family(family).sample
    # A string seed is hashed with SHA-512 by `random`, so it is stable across processes.
    rng = random.Random(f"{family}:{seed}")
    while True:
        yield sample(rng)


def chat_record(prompt: str, answer: str) -> dict[str, Any]:
    """The chat record of one user prompt and its assistant answer."""
    return {
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": answer},
        ]
    }


def generate(family: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` chat records of `family` with pairwise distinct prompts, deterministic for `seed`.

    The records of a smaller `n` are a prefix of those of a larger one.
    """
    spec = get_family(family)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n > spec.distinct_prompts // 2:
        # Past half the prompt space, rejection sampling slows down; no test needs that.
        raise ValueError(
            f"family {family!r} has about {spec.distinct_prompts} distinct prompts; "
            f"asked for {n}, at most {spec.distinct_prompts // 2} allowed"
        )
    seen: set[str] = set()
    records: list[dict[str, Any]] = []
    for prompt, answer in pairs(family, seed):
        if len(records) == n:
            break
        if prompt not in seen:
            seen.add(prompt)
            records.append(chat_record(prompt, answer))
    return records


RECORD_KINDS = ("sft", "preference", "unpaired")


def near_miss(answer: str, rng: random.Random) -> str:
    """A wrong answer that looks right: ``answer`` with one letter or digit changed to
    another of its class ('85' -> '35'), so it always differs and keeps its form."""
    positions = [i for i, c in enumerate(answer) if c.isascii() and c.isalnum()]
    if not positions:
        return answer + "x"
    i = rng.choice(positions)
    c = answer[i]
    pool = string.digits if c.isdigit() else _LETTERS if c.islower() else string.ascii_uppercase
    return answer[:i] + rng.choice([p for p in pool if p != c]) + answer[i + 1 :]


def as_kind(records: list[dict[str, Any]], kind: str, seed: int = 0) -> list[dict[str, Any]]:
    """The chat records of ``generate`` rewritten as records of ``kind``, deterministic for ``seed``.

    ``sft``: unchanged; ``preference``: TRL's conversational pairs ``{"prompt": [user],
    "chosen": [assistant: the answer], "rejected": [assistant: a near miss]}``;
    ``unpaired``: KTO's ``{"prompt", "completion", "label"}``, the right answer labelled
    true on even lines and a near miss labelled false on odd ones.
    """
    if kind not in RECORD_KINDS:
        raise ValueError(f"unknown record kind {kind!r}; allowed: {', '.join(RECORD_KINDS)}")
    if kind == "sft":
        return records
    rng = random.Random(f"near-miss:{seed}")
    out: list[dict[str, Any]] = []
    for i, record in enumerate(records):
        user, answer = record["messages"][0], record["messages"][1]
        wrong = {"role": "assistant", "content": near_miss(answer["content"], rng)}
        if kind == "preference":
            out.append({"prompt": [user], "chosen": [answer], "rejected": [wrong]})
        else:
            good = i % 2 == 0
            out.append({"prompt": [user], "completion": [answer if good else wrong], "label": good})
    return out


def eval_path_for(train_path: Path) -> Path:
    """The eval file that belongs to `train_path`: `data/rev.jsonl` -> `data/rev.eval.jsonl`."""
    train_path = Path(train_path)
    stem = train_path.name.removesuffix(".jsonl")
    return train_path.with_name(f"{stem}.eval.jsonl")


def write_synthetic(
    family: str, n: int, out: Path, *, seed: int = 0, eval_n: int | None = None, kind: str = "sft"
) -> tuple[Path, Path]:
    """Write `n` train records to `out` and `eval_n` eval records beside it.

    The eval file is `out` with the suffix `.eval.jsonl`; `eval_n` defaults to
    max(50, n // 10). No prompt is in both files. The train records are of `kind`
    (see `as_kind`); the eval records are always chat records, since a model is judged
    by its answers whatever it learned from. Each file is written to a temporary name,
    fsynced and renamed into place, so a reader never sees half a file.
    Returns (train path, eval path).
    """
    if kind not in RECORD_KINDS:
        raise ValueError(f"unknown record kind {kind!r}; allowed: {', '.join(RECORD_KINDS)}")
    out = Path(out)
    eval_n = max(50, n // 10) if eval_n is None else eval_n
    if eval_n < 0:
        raise ValueError(f"eval_n must be >= 0, got {eval_n}")
    # Eval records come first in the stream, so the eval set of a seed does not change
    # when only the train size does.
    records = generate(family, eval_n + n, seed)
    eval_out = eval_path_for(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_jsonl_atomically(as_kind(records[eval_n:], kind, seed), out)
    _write_jsonl_atomically(records[:eval_n], eval_out)
    return out, eval_out


def _write_jsonl_atomically(records: list[dict[str, Any]], path: Path) -> None:
    write_bytes_atomically(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode())
