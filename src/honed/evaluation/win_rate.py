"""Win rate: the candidate against the live model, prompt by prompt, on the same prompts.

For preference training there is often no reference answer to match exactly: the
held-out split holds pairs or thumbs. What can be measured is which of two answers to the
same prompt is better. A *decider* says so for one prompt: the track's scorer (each
answer scored, the higher wins, equal is a tie) or an LLM judge (the teacher's endpoint,
asked in both orders; see :mod:`honed.evaluation.llm_judge`).

The rate counts a tie as half a win. Whether the candidate is better is a sign test on
the decided prompts alone (wins against losses, ties left out): under "neither is
better" each decided prompt is a fair coin, so ``p_better`` = P(X >= wins), X ~
Binomial(wins + losses, 1/2), and ``p`` is the two-sided figure.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from honed.evaluation.statistics import mcnemar_p

WIN, LOSS, TIE = "win", "loss", "tie"
MODES = ("off", "scorer", "judge")


@dataclass(frozen=True)
class Comparison:
    """One prompt's outcome for the candidate, and why when it is not plain: ``identical``
    (the same answer: nothing to decide), ``disagreement`` (the judge preferred the same
    position in both orders), ``unparsable`` (a judge reply that says neither A nor B),
    ``failed`` (the judge could not be asked)."""

    outcome: str
    note: str | None = None
    reason: str | None = None  # why the judge could not be asked


Decide = Callable[[list[dict[str, Any]], str, str], Comparison]
"""``decide(prompt_messages, candidate_answer, live_answer)``."""


@dataclass
class WinRate:
    """Wins, losses and ties of the candidate, its rate and the sign test's p-values."""

    wins: int
    losses: int
    ties: int
    notes: dict[str, int] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    failure: str | None = None  # the first reason a judge could not be asked

    @property
    def n(self) -> int:
        return self.wins + self.losses + self.ties

    @property
    def rate(self) -> float | None:
        """Wins plus half the ties, over all prompts; None with no prompt."""
        return (self.wins + self.ties / 2) / self.n if self.n else None

    @property
    def p_better(self) -> float:
        """One-sided sign test: the evidence that the candidate wins more than it loses."""
        return mcnemar_p(self.wins, self.losses)

    @property
    def p_worse(self) -> float:
        """One-sided sign test: the evidence that the candidate loses more than it wins."""
        return mcnemar_p(self.losses, self.wins)

    @property
    def p(self) -> float:
        """Two-sided sign test (scipy's ``binomtest(wins, wins + losses).pvalue``)."""
        return min(1.0, 2 * min(self.p_better, self.p_worse))

    def as_dict(self) -> dict[str, Any]:
        """What the evaluation keeps (JSON)."""
        return {"n": self.n, "wins": self.wins, "losses": self.losses, "ties": self.ties, "rate": self.rate,
                "p": self.p, "p_better": self.p_better, "p_worse": self.p_worse, "notes": dict(self.notes),
                "failure": self.failure, "samples": self.samples}


def win_rate(candidate_answers: list[str], live_answers: list[str], prompts: list[list[dict[str, Any]]],
             decide: Decide, samples_kept: int = 0) -> WinRate:
    """Compare the candidate's and the live model's answers to the same ``prompts`` with
    ``decide``; keep the first ``samples_kept`` comparisons for inspection. Identical
    answers are a tie without asking."""
    return win_rate_over_samples([candidate_answers], [live_answers], prompts, decide, samples_kept)


def win_rate_over_samples(candidate_rounds: list[list[str]], live_rounds: list[list[str]],
                          prompts: list[list[dict[str, Any]]], decide: Decide, samples_kept: int = 0) -> WinRate:
    """:func:`win_rate` when each model answered every prompt several times (sampled):
    round k of the candidate is compared with round k of the live model, and a prompt is
    won (lost) when the candidate wins more (fewer) of its comparisons than it loses; the
    sign test stays one prompt, one coin. Notes count comparisons; the kept samples are
    the first round's."""
    if len(candidate_rounds) != len(live_rounds) or not candidate_rounds:
        raise ValueError(f"win_rate needs as many rounds of each model: {len(candidate_rounds)} and {len(live_rounds)}")
    for candidate_answers, live_answers in zip(candidate_rounds, live_rounds):
        if not len(candidate_answers) == len(live_answers) == len(prompts):
            raise ValueError(f"win_rate needs one answer of each model per prompt: {len(candidate_answers)} "
                             f"candidate answers, {len(live_answers)} live answers, {len(prompts)} prompts")
    counts: Counter[str] = Counter()
    notes: Counter[str] = Counter()
    samples: list[dict[str, Any]] = []
    failure: str | None = None
    for i, prompt in enumerate(prompts):
        balance = 0
        for k, (candidate_answers, live_answers) in enumerate(zip(candidate_rounds, live_rounds)):
            candidate, live = candidate_answers[i], live_answers[i]
            result = (Comparison(TIE, "identical") if candidate.strip() == live.strip()
                      else decide(prompt, candidate, live))
            if result.outcome not in (WIN, LOSS, TIE):
                raise ValueError(f"a decider returned {result.outcome!r}; allowed: {WIN}, {LOSS}, {TIE}")
            balance += (result.outcome == WIN) - (result.outcome == LOSS)
            if result.note:
                notes[result.note] += 1
            failure = failure or result.reason
            if k == 0 and len(samples) < samples_kept:
                samples.append({"prompt": prompt[-1]["content"] if prompt else "", "candidate": candidate,
                                "live": live, "outcome": result.outcome, "note": result.note})
        counts[WIN if balance > 0 else LOSS if balance < 0 else TIE] += 1
    return WinRate(counts[WIN], counts[LOSS], counts[TIE], dict(notes), samples, failure)


def scorer_decider(score: Callable[[str, list[dict[str, Any]]], float]) -> Decide:
    """Each answer scored by ``score(answer, prompt_messages)``; the higher wins."""

    def decide(prompt: list[dict[str, Any]], candidate: str, live: str) -> Comparison:
        ours, theirs = score(candidate, prompt), score(live, prompt)
        return Comparison(WIN if ours > theirs else LOSS if ours < theirs else TIE)

    return decide


def both_orders(ask: Callable[[list[dict[str, Any]], str, str], str | None]) -> Decide:
    """A judge asked twice, the candidate first as A then second as B. ``ask`` returns
    ``"A"``, ``"B"``, ``"tie"``, None (a reply it could not parse) or raises JudgeUnavailable.
    Only two verdicts that agree decide; a disagreement (a judge that prefers a position)
    is a tie."""

    def decide(prompt: list[dict[str, Any]], candidate: str, live: str) -> Comparison:
        try:
            first, second = ask(prompt, candidate, live), ask(prompt, live, candidate)
        except JudgeUnavailable as exc:
            return Comparison(TIE, "failed", str(exc))
        if first is None or second is None:
            return Comparison(TIE, "unparsable")
        if first == "A" and second == "B":
            return Comparison(WIN)
        if first == "B" and second == "A":
            return Comparison(LOSS)
        if first == second == "tie":
            return Comparison(TIE)
        return Comparison(TIE, "disagreement")

    return decide


class JudgeUnavailable(RuntimeError):
    """The judge could not be asked (unreachable, an HTTP error, not a chat completion)."""


def prompt_of(record: dict[str, Any]) -> list[dict[str, Any]] | None:
    """What the model is asked in a record of any kind: a chat record's conversation before
    its last assistant turn, a pair's or a judgement's ``prompt`` (messages, or a string
    taken as one user turn). None when the record has no prompt."""
    from honed.data.tokenization import prompt_messages

    if isinstance(record.get("messages"), list) and any(m.get("role") == "assistant" for m in record["messages"]):
        return prompt_messages(record) or None
    prompt = record.get("prompt")
    if isinstance(prompt, str) and prompt.strip():
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and prompt:
        return prompt
    return None


def distinct_prompts(records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The records' prompts, each once, in order (unpaired judgements repeat prompts)."""
    seen, prompts = set(), []
    for record in records:
        prompt = prompt_of(record)
        key = json.dumps(prompt, sort_keys=True)
        if prompt is not None and key not in seen:
            seen.add(key)
            prompts.append(prompt)
    return prompts
