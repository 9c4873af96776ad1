"""Scorers the learning tests configure as ``learn.scorer`` (a user's own 'module:function')."""

from __future__ import annotations


def reversal(output: str, record: dict) -> float:
    """1.0 when ``output`` is the reversal of the word the prompt asked about, else 0.0."""
    prompt = record["messages"][-1]["content"]
    word = prompt.removeprefix("reverse: ").strip()
    return float(output.strip() == word[::-1])
