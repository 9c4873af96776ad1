"""An LLM judge: the teacher's endpoint (``learn.teacher``) asked which of two answers to
the same conversation is better. It replies A, B or TIE; anything else is unparsable and
counted, never guessed. :func:`honed.evaluation.win_rate.both_orders` asks it twice, so
a judge that favours a position cannot decide on its own."""

from __future__ import annotations

import os
import re
from typing import Any

from honed.config import LearnSettings
from honed.evaluation.win_rate import JudgeUnavailable

JUDGE_SYSTEM = ("You compare two answers to the same conversation and say which answer is better: more "
                "correct, more helpful, better suited to the request. Reply with one word: A, B or TIE.")
_VERDICT = re.compile(r"[\s\"'*`(\[]*(?:answer\s*)?(A|B|TIE)[\s\"'*`)\].!]*", re.IGNORECASE)


def judge_prompt(prompt: list[dict[str, Any]], first: str, second: str) -> list[dict[str, Any]]:
    """The chat messages that ask which of ``first`` (A) and ``second`` (B) is better."""
    conversation = "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in prompt)
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": f"Conversation:\n{conversation}\n\n[Answer A]\n{first}\n\n[Answer B]\n"
                                        f"{second}\n\nWhich answer is better? Reply A, B or TIE."}]


def parse_verdict(reply: str | None) -> str | None:
    """``"A"``, ``"B"`` or ``"tie"`` from a judge's reply, or None when it says something else."""
    match = _VERDICT.fullmatch(reply or "")
    if match is None:
        return None
    word = match.group(1).upper()
    return "tie" if word == "TIE" else word


class TeacherJudge:
    """The teacher of one track's learning settings, as a judge (the ``openai`` SDK,
    greedy, a few tokens per verdict)."""

    def __init__(self, cfg: LearnSettings) -> None:
        import openai

        t = cfg.teacher
        if not t.base_url or not t.model:
            raise JudgeUnavailable("eval.win_rate = 'judge' asks the teacher: set learn.teacher.base_url and "
                                   "learn.teacher.model")
        self.base_url, self.model, self.timeout_s = t.base_url, t.model, t.timeout_s
        self.client = openai.OpenAI(base_url=t.base_url, api_key=os.environ.get(t.api_key_env) or "not-set",
                                    timeout=t.timeout_s, max_retries=0)
        self.calls = 0

    def ask(self, prompt: list[dict[str, Any]], first: str, second: str) -> str | None:
        """One verdict (see :func:`parse_verdict`); JudgeUnavailable when the teacher
        cannot be asked."""
        import openai

        self.calls += 1
        try:
            completion = self.client.chat.completions.create(model=self.model, messages=judge_prompt(prompt, first,  # type: ignore[arg-type]
                                                             second), max_tokens=8, temperature=0)
        except openai.APITimeoutError:
            raise JudgeUnavailable(f"no verdict within {self.timeout_s:g}s from the judge at {self.base_url}") from None
        except openai.APIConnectionError as exc:
            raise JudgeUnavailable(f"cannot reach the judge at {self.base_url}: {exc.__cause__ or exc}") from None
        except openai.APIStatusError as exc:
            raise JudgeUnavailable(f"the judge answered HTTP {exc.status_code}") from None
        except (openai.APIError, ValueError) as exc:
            raise JudgeUnavailable(f"the judge's reply is not a chat completion: {exc}") from None
        choices = getattr(completion, "choices", None)
        if not isinstance(choices, list) or not choices or getattr(choices[0], "message", None) is None:
            return None  # a reply with no verdict in it: unparsable, like one that says neither A nor B
        content = choices[0].message.content
        return parse_verdict(content if isinstance(content, str) else None)
