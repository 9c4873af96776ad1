"""The teacher: any model behind an OpenAI-compatible API, asked through the official
``openai`` SDK for a corrected answer to an experience's prompt. Whatever happens (no
answer, an HTTP error, a body that is not a chat completion, an answer that fails
validation) becomes a result with the reason; nothing here raises for a bad teacher."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from honed.config import LearnSettings
from honed.learning.judge import answer_problem


class TeacherConfigError(ValueError):
    """The teacher is not configured well enough to be asked; the message says what to set."""


@dataclass(frozen=True)
class TeacherResult:
    """One teacher call: ``accepted`` (with the output), ``invalid`` or ``failed`` (with the reason)."""

    status: str
    output: str | None
    reason: str | None
    score: float | None
    latency_ms: float


class Teacher:
    """A client for the teacher of one track's learning settings."""

    def __init__(self, cfg: LearnSettings) -> None:
        import openai

        t = cfg.teacher
        if not t.base_url or not t.model:
            raise TeacherConfigError("no teacher: set learn.teacher.base_url and learn.teacher.model")
        self.cfg = cfg
        self.model = t.model
        self.client = openai.OpenAI(base_url=t.base_url, api_key=os.environ.get(t.api_key_env) or "not-set",
                                    timeout=t.timeout_s, max_retries=0)

    def correct(self, messages: list[dict]) -> TeacherResult:
        """Ask for an answer to ``messages`` and validate it."""
        import openai

        t = self.cfg.teacher
        prompt = ([{"role": "system", "content": t.system_prompt}] if t.system_prompt else []) + messages
        start = time.monotonic()

        def failed(reason: str) -> TeacherResult:
            return TeacherResult("failed", None, reason, None, (time.monotonic() - start) * 1000)

        try:
            completion = self.client.chat.completions.create(model=t.model, messages=prompt,
                                                             max_tokens=t.max_tokens, temperature=0)
        except openai.APITimeoutError:
            return failed(f"no answer within {t.timeout_s:g}s (learn.teacher.timeout_s) from {t.base_url}")
        except openai.APIConnectionError as exc:
            return failed(f"cannot reach the teacher at {t.base_url}: {exc.__cause__ or exc}")
        except openai.APIStatusError as exc:
            return failed(f"the teacher answered HTTP {exc.status_code}: {_short(exc.message)}")
        except (openai.APIError, ValueError) as exc:  # a body that is not a chat completion
            return failed(f"the teacher's reply is not a chat completion: {_short(str(exc))}")
        latency = (time.monotonic() - start) * 1000
        if isinstance(completion, (str, bytes)):  # the SDK hands back a body that is not JSON as it came
            return TeacherResult("invalid", None, f"the teacher's reply is not a chat completion: "
                                 f"{_short(repr(completion), 80)}", None, latency)
        choices = getattr(completion, "choices", None)
        if not isinstance(choices, list) or not choices or getattr(choices[0], "message", None) is None:
            return TeacherResult("invalid", None, "the teacher's reply has no choices", None, latency)
        output = choices[0].message.content
        if output is not None and not isinstance(output, str):
            return TeacherResult("invalid", None, "the teacher's answer is not text", None, latency)
        problem, score = answer_problem(self.cfg, output, messages)
        if problem:
            return TeacherResult("invalid", output, problem, score, latency)
        return TeacherResult("accepted", output.strip(), None, score, latency)


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "…"
