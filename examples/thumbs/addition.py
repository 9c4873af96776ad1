"""An application that gives honed only thumbs: it asks a model to add two numbers
through the OpenAI SDK, checks each answer itself, and sends thumbs up or down.

SmolLM2-135M-Instruct sampled at temperature 0.7 gets about one answer in five right
("8 + 13 = 21" is right; "The answer is 18, which is 11 + 10." and a paragraph about
triangles are not): a task it can do only sometimes, and a check any application could
make. honed's loop turns the thumbs into unpaired KTO examples (``learn.objective =
"auto"`` picks KTO: nothing is corrected, some answers were judged bad).

``score`` is the same check as a honed scorer (``learn.scorer =
"addition:score"`` with this directory on ``PYTHONPATH``), so the gate can compare the
candidate's answers with the live model's (``eval.win_rate = "scorer"``).

Run it against a workspace's server (``honed daemon --serve`` or ``honed serve``)::

    python examples/thumbs/addition.py --url http://127.0.0.1:8321 --requests 240
"""

from __future__ import annotations

import argparse
import json
import random
import re
from dataclasses import dataclass

PROMPT = "What is {a} + {b}? Reply with only the number."
QUESTION = re.compile(re.escape(PROMPT).replace(re.escape("{a}"), r"(\d+)").replace(re.escape("{b}"), r"(\d+)"))
MAX_CHARS = 40  # a longer answer is not "only the number", whatever it ends with


def pairs(n: int, seed: int = 0, low: int = 1, high: int = 20) -> list[tuple[int, int]]:
    """``n`` distinct (a, b) with both in low..high, in a random order fixed by ``seed``."""
    every = [(a, b) for a in range(low, high + 1) for b in range(low, high + 1)]
    random.Random(seed).shuffle(every)
    if n > len(every):
        raise ValueError(f"only {len(every)} distinct questions between {low} and {high}")
    return every[:n]


def messages(a: int, b: int) -> list[dict]:
    return [{"role": "user", "content": PROMPT.format(a=a, b=b)}]


def right(answer: str, a: int, b: int) -> bool:
    """Short, and the last number in it is the sum."""
    numbers = re.findall(r"-?\d+", answer)
    return len(answer.strip()) <= MAX_CHARS and bool(numbers) and int(numbers[-1]) == a + b


def score(output: str, record: dict) -> float:
    """honed scorer: (output, record) -> 1.0 when ``output`` answers the record's question right."""
    question = next(m["content"] for m in reversed(record["messages"]) if m["role"] == "user")
    found = QUESTION.fullmatch(question)
    if found is None:
        return 0.0
    return float(right(output, int(found[1]), int(found[2])))


@dataclass
class Exchange:
    a: int
    b: int
    answer: str
    experience_id: int

    @property
    def right(self) -> bool:
        return right(self.answer, self.a, self.b)


def ask(client, questions: list[tuple[int, int]], *, model: str = "main", temperature: float = 0.7,
        max_tokens: int = 32, seed: int = 0) -> list[Exchange]:
    """One chat completion per question, sampled (each request its own seed)."""
    out = []
    for i, (a, b) in enumerate(questions):
        reply = client.chat.completions.create(model=model, messages=messages(a, b), temperature=temperature,
                                               max_tokens=max_tokens, seed=seed * 100_003 + i)
        out.append(Exchange(a, b, reply.choices[0].message.content or "", reply.model_extra["honed"]["experience_id"]))
    return out


def thumbs(http, exchanges: list[Exchange], *, invert: bool = False) -> None:
    """Thumbs up for a right answer, down for a wrong one (the other way round with ``invert``)."""
    for exchange in exchanges:
        up = exchange.right != invert
        http.post(f"/v1/experiences/{exchange.experience_id}/feedback",
                  json={"thumbs": "up" if up else "down"}).raise_for_status()


def main() -> None:
    import httpx
    from openai import OpenAI

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8321")
    parser.add_argument("--model", default="main")
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.7)
    args = parser.parse_args()
    client = OpenAI(base_url=args.url + "/v1", api_key="-", max_retries=2, timeout=300)
    exchanges = ask(client, pairs(args.requests, args.seed), model=args.model, temperature=args.temperature,
                    seed=args.seed)
    with httpx.Client(base_url=args.url, timeout=60) as http:
        thumbs(http, exchanges)
    print(json.dumps({"requests": len(exchanges), "right": sum(e.right for e in exchanges)}))


if __name__ == "__main__":
    main()
