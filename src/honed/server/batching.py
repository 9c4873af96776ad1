"""Dynamic batching for the built-in server: one decode loop per loaded model, in a thread
of its own, that answers every request on that model together. A request joins the batch
between two decode steps (its prompt is prefilled, together with those of the requests
that arrived in the same step, then its KV cache is padded on the left to the batch's
length and added as a row), and leaves it as soon as it ends (its
end-of-turn token, a stop string, its token budget, or its client gone): the rows that
remain go on without waiting, and nobody waits for the longest answer.

Every row draws its tokens as its own request says (temperature, top_p, penalties) from a
generator of its own, seeded from the request's ``seed``, so its answer does not depend on
which other requests share the batch, up to the rounding of batched arithmetic.

The loop holds the model only while it has rows; with none for ``IDLE_S`` its thread ends.
Requests hold their lease on the model (:class:`~honed.server.serving.ModelPool`) while
their rows are in the loop, so a release for training or a move between devices waits for
them as before.
"""

from __future__ import annotations

import logging
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

from honed.server import decode_threads

log = logging.getLogger(__name__)

IDLE_S = 2.0  # a loop with no row for this long ends its thread


@dataclass
class Row:
    """One answer being generated: what was asked, and what came of it so far."""

    prompt: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None  # None: no log-probabilities; 0..20: that many alternatives
    grammar: Any = None  # a honed.server.serving.GrammarMask the answer must follow (response_format)
    streamer: Any = None
    cancel: threading.Event | None = None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[tuple[int, float, list[tuple[int, float]]]] = field(default_factory=list)
    finish_reason: str = ""
    text: str | None = None  # the answer cut at a stop string, when one was met
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    generator: Any = None
    logits: Any = None  # the next token's logits
    position: int = 0  # the next token's position

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class DecodeLoop:
    """The decode loop of one loaded model (see the module's docstring)."""

    def __init__(self, model: Any, tokenizer: Any, stop_ids: list[int], max_batch: int) -> None:
        self.model, self.tokenizer, self.stop_ids = model, tokenizer, set(stop_ids)
        self.max_batch = max_batch
        self._cv = threading.Condition()
        self._pending: list[Row] = []
        self._thread: threading.Thread | None = None
        self.steps = 0  # decode steps taken (for tests and figures)
        self.widest = 0  # the most rows one step has decoded together

    def run(self, rows: list[Row]) -> None:
        """Generate ``rows`` (in the loop, beside whatever else it is generating); returns
        when every one has ended. An error in the loop is raised here."""
        with self._cv:
            self._pending.extend(rows)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="honed-decode", daemon=True)
                self._thread.start()
            self._cv.notify_all()
        for row in rows:
            row.done.wait()
        for row in rows:
            if row.error is not None:
                raise row.error

    # --- the loop's thread ----------------------------------------------------------------

    def _loop(self) -> None:
        import torch

        active: list[Row] = []
        cache = mask = None
        while True:
            with self._cv:
                if not active and not self._pending:
                    self._cv.wait(IDLE_S)
                    if not self._pending:
                        self._thread = None
                        return
                joining = self._pending[: self.max_batch - len(active)]
                del self._pending[: len(joining)]
            try:
                decode_threads.apply()  # fewer threads while a trainer shares the CPU
                with torch.inference_mode():
                    for group in prefill_groups(joining):
                        cache, mask = self._join(group, cache, mask)
                        active.extend(group)
                    ended = [i for i, row in enumerate(active) if self._next_token(row)]
                    for i in ended:
                        self._finish(active[i])
                    if ended:
                        keep = [i for i in range(len(active)) if i not in set(ended)]
                        active = [active[i] for i in keep]
                        if active:
                            cache.batch_select_indices(torch.tensor(keep))
                            mask = mask[keep]
                        else:
                            cache = mask = None
                    if active:
                        cache, mask = self._step(active, cache, mask)
            except BaseException as exc:  # noqa: BLE001 - every waiting request hears of it
                log.exception("serving: the decode loop failed")
                for row in active + joining:
                    if not row.done.is_set():
                        row.error = exc
                        self._finish(row)
                active, cache, mask = [], None, None

    def _join(self, rows: list[Row], cache, mask):
        """Prefill ``rows``' prompts together (padded on the left) and add their caches to
        the batch's as new rows."""
        import torch
        from transformers import DynamicCache

        device = self.model.device
        width = max(len(row.prompt) for row in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        own_mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            row.generator = torch.Generator(device="cpu").manual_seed(row.seed)
            if row.streamer is not None:
                row.streamer.put(torch.tensor([row.prompt]))  # a transformers streamer hears the prompt first
            ids[i, width - len(row.prompt):] = torch.tensor(row.prompt)
            own_mask[i, width - len(row.prompt):] = 1
        ids, own_mask = ids.to(device), own_mask.to(device)
        own = DynamicCache()
        positions = (own_mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=own_mask, position_ids=positions, cache=own, use_cache=True,
                         logits_to_keep=1)
        for i, row in enumerate(rows):
            row.logits, row.position = out.logits[i, -1].float(), len(row.prompt)
        if cache is None:
            return own, own_mask
        width = max(mask.shape[1], own_mask.shape[1])
        for batch_layer, new_layer in zip(cache.layers, own.layers, strict=True):
            batch_layer.keys = torch.cat([_pad_left(batch_layer.keys, width), _pad_left(new_layer.keys, width)])
            batch_layer.values = torch.cat([_pad_left(batch_layer.values, width),
                                            _pad_left(new_layer.values, width)])
        mask = torch.cat([_pad_left(mask, width), _pad_left(own_mask, width)])
        return cache, mask

    def _next_token(self, row: Row) -> bool:
        """Draw ``row``'s next token from its logits; whether the row has ended."""
        import torch

        if row.cancel is not None and row.cancel.is_set():
            row.finish_reason = "cancelled"
            return True
        logits = penalized(row.logits, row.tokens, row.presence_penalty, row.frequency_penalty)
        if row.grammar is not None:
            logits = row.grammar.allowed(logits)
        if row.greedy:
            token = int(torch.argmax(logits))
        else:
            probs = torch.softmax(logits / row.temperature, dim=-1)
            if row.top_p < 1.0:
                ordered, order = torch.sort(probs, descending=True)
                outside = torch.cumsum(ordered, dim=-1) - ordered >= row.top_p  # the smallest set reaching top_p
                ordered[outside] = 0
                probs = torch.zeros_like(probs).scatter_(0, order, ordered)
            token = int(torch.multinomial(probs, 1, generator=row.generator))
        if token in self.stop_ids:
            row.finish_reason = "stop"
            return True
        if row.top_logprobs is not None:
            logp = torch.log_softmax(row.logits, dim=-1)  # the model's own distribution
            best = torch.topk(logp, row.top_logprobs) if row.top_logprobs else None
            row.logprobs.append((token, float(logp[token]), [] if best is None else
                                 [(int(i), float(v)) for v, i in zip(best.values, best.indices, strict=True)]))
        row.tokens.append(token)
        if row.grammar is not None:
            row.grammar.consume(token)
        if row.streamer is not None:
            row.streamer.put(torch.tensor([token]))
        if row.stop:
            from honed.server.serving import cut_at_stop

            text, met = cut_at_stop(self.tokenizer.decode(row.tokens, skip_special_tokens=True), row.stop)
            if met:
                row.text, row.finish_reason = text, "stop"
                return True
        if len(row.tokens) >= row.max_tokens:
            row.finish_reason = "length"
            return True
        return False

    def _step(self, active: list[Row], cache, mask):
        """One decode step for every active row: the logits of each row's next token."""
        import torch

        device = self.model.device
        ids = torch.tensor([[row.tokens[-1]] for row in active], device=device)
        positions = torch.tensor([[row.position] for row in active], device=device)
        mask = torch.cat([mask, torch.ones(len(active), 1, dtype=mask.dtype, device=mask.device)], dim=1)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                         use_cache=True, logits_to_keep=1)
        for i, row in enumerate(active):
            row.logits = out.logits[i, -1].float()
            row.position += 1
        self.steps += 1
        self.widest = max(self.widest, len(active))
        return cache, mask

    def _finish(self, row: Row) -> None:
        if row.streamer is not None:
            row.streamer.end()
        row.done.set()


def prefill_groups(rows: list[Row], waste: float = 0.25) -> list[list[Row]]:
    """``rows`` in groups to prefill together: by prompt length, each group padding at most
    ``waste`` of its tokens (a long prompt is not padded to by many short ones)."""
    groups: list[list[Row]] = []
    for row in sorted(rows, key=lambda r: len(r.prompt)):
        group = groups[-1] if groups else None
        if group and (len(group) + 1) * len(row.prompt) <= (1 + waste) * (sum(len(r.prompt) for r in group)
                                                                            + len(row.prompt)):
            group.append(row)
        else:
            groups.append([row])
    return groups


def penalized(logits, tokens: list[int], presence: float, frequency: float):
    """``logits`` with OpenAI's penalties for the answer's ``tokens`` so far: each token's
    logit lowered by ``presence`` once it has appeared and by ``frequency`` for every time
    it has (the prompt's tokens do not count)."""
    import torch

    if not tokens or not (presence or frequency):
        return logits
    counts = torch.bincount(torch.tensor(tokens, dtype=torch.long), minlength=logits.shape[-1]).to(logits)
    return logits - frequency * counts - presence * (counts > 0).to(logits)


def _pad_left(tensor, width: int):
    """``tensor`` padded with zeros on the left of its sequence axis (the one before last
    for keys and values, the last for a mask) to ``width``."""
    import torch.nn.functional as F

    missing = width - (tensor.shape[-1] if tensor.dim() == 2 else tensor.shape[-2])
    if missing <= 0:
        return tensor
    return F.pad(tensor, (missing, 0)) if tensor.dim() == 2 else F.pad(tensor, (0, 0, missing, 0))


def fresh_seed() -> int:
    """A seed for a request that gave none."""
    return secrets.randbits(62)
