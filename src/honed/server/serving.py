"""The models behind ``/v1/chat/completions``: each track's deployed adapter on its base.

A request leases the model that is live for its track *now* (one store read), so a
deploy or a rollback switches what new requests get without a restart, while requests
already generating finish on the version they started with; a version nobody uses and
no track serves any more is dropped. Loading and generating happen in worker threads;
generation on one model is serialised (its lock), different versions run side by side.
Decoding is greedy unless a request asks to sample (``temperature``, ``server.default_temperature``):
greedy answers are reproducible, which is what evaluation and the gates measure too.

While a trainer claims the pool's device (see :mod:`honed.server.device_yield`), the pool
either refuses new requests and drops its models (:meth:`ModelPool.release`) or moves
them to the CPU (:meth:`ModelPool.move_models`); either way the requests already under
way finish first.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from honed.evaluation.exact_match import GREEDY, Sampling, model_text
from honed.server import decode_threads
from honed.store import AdapterInfo, NotFoundError, Store

log = logging.getLogger(__name__)


class ModelNameError(ValueError):
    """A ``model`` that names no track, adapter or base; the message lists what exists."""


class ModelReleased(Exception):
    """The models are released to a training job; no request is served until it ends."""

    def __init__(self, job: int | None, device: str, since: float) -> None:
        self.job, self.device, self.since = job, device, since
        holder = f"training job {job}" if job is not None else "a trainer"
        super().__init__(f"the model is released to {holder} on {device} (server.on_training = 'unload'); "
                         "it is served again when the job has finished training and evaluating")


@dataclass
class Target:
    """What a ``model`` name resolves to: a track, its base version, and the adapter
    (None: the bare base)."""

    track: str
    base_version: int
    adapter: AdapterInfo | None

    @property
    def key(self) -> tuple[int, int | None]:
        return self.base_version, self.adapter.id if self.adapter else None

    @property
    def label(self) -> str:
        return f"{self.track}@{self.adapter.name if self.adapter else f'base-v{self.base_version}'}"


@dataclass
class LoadedModel:
    """One base (+ adapter) in memory, with the requests using it now."""

    target: Target
    model: Any
    tokenizer: Any
    stop_ids: list[int]
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0
    loop: Any = None  # its DecodeLoop (honed.server.batching) with server.max_batch > 0; None: one at a time
    grammar_tokenizer: Any = None  # llguidance's view of the tokenizer, made at the first response_format


@dataclass
class Answer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    logprobs: list[dict] | None = None  # OpenAI's choices[].logprobs.content, when asked for


@dataclass(frozen=True)
class Options:
    """What a request asks of the decoding beyond how tokens are drawn (:class:`Sampling`),
    as OpenAI defines it: ``stop`` strings (the answer ends before the first one, which is
    not part of it), ``n`` answers, ``presence_penalty`` and ``frequency_penalty`` (each
    token's logit lowered by the first once it has appeared in the answer and by the second
    for every time it has), the ``logprobs`` of each answer token with the
    ``top_logprobs`` most likely alternatives (from the model's own distribution, before
    penalties and temperature), and the ``grammar`` of ``response_format`` (a JSON object,
    or one that follows a JSON schema; see :class:`GrammarMask`)."""

    stop: tuple[str, ...] = ()
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool = False
    top_logprobs: int = 0
    grammar: str | None = None  # llguidance's grammar the answer must follow (response_format), if any

    @property
    def penalized(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty)


PLAIN = Options()


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` up to the first of the ``stop`` strings, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


def penalties(presence: float, frequency: float, prompt_len: int):
    """A transformers logits processor with OpenAI's presence and frequency penalties over
    the tokens generated so far (the prompt's tokens do not count)."""
    import torch
    from transformers import LogitsProcessor

    class Penalties(LogitsProcessor):
        def __call__(self, input_ids, scores):
            generated = input_ids[:, prompt_len:]
            if generated.shape[1] == 0:
                return scores
            counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
            return scores - frequency * counts - presence * (counts > 0).to(scores.dtype)

    return Penalties()


def json_grammar(schema: dict | None = None) -> str:
    """llguidance's grammar for OpenAI's ``response_format``: any JSON object
    (``json_object``), or one that follows ``schema`` (``json_schema``); compact, with no
    whitespace between tokens of JSON, so a model cannot pad an answer with blanks forever.
    :class:`GrammarError` names what is wrong with a schema llguidance cannot follow."""
    import llguidance

    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema if schema is not None else {"type": "object"},
                                                           defaults={"whitespace_flexible": False})
    if problem := llguidance.LLMatcher.validate_grammar(grammar):  # empty when it can be followed
        raise GrammarError(problem)
    return grammar


class GrammarError(ValueError):
    """A ``response_format`` schema that cannot be followed; the message says why."""


class GrammarMask:
    """Keeps one answer to a grammar (:func:`json_grammar`) as it is generated: llguidance's
    matcher, told every token drawn, leaves in the logits only the tokens that can continue
    the answer, and only the end-of-turn token once the answer is complete. An answer cut
    by its token budget may stop short of the end (``finish_reason`` ``length``), as
    OpenAI's do."""

    def __init__(self, grammar_tokenizer, grammar: str) -> None:
        import llguidance
        import llguidance.torch

        self.matcher = llguidance.LLMatcher(grammar_tokenizer, grammar)
        self.bitmask = llguidance.torch.allocate_token_bitmask(1, grammar_tokenizer.vocab_size)

    def allowed(self, logits):
        """``logits`` (one row) with every token the grammar does not allow next at -inf."""
        import llguidance.torch

        if self.matcher.is_error():  # a row that has ended, padded by transformers' generate
            return logits
        llguidance.torch.fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        masked = logits.unsqueeze(0).clone()
        llguidance.torch.apply_token_bitmask_inplace(masked, self.bitmask.to(masked.device))
        return masked[0]

    def consume(self, token: int) -> None:
        if not self.matcher.is_error():
            self.matcher.consume_token(token)


def grammar_tokenizer(loaded: LoadedModel):
    """llguidance's view of ``loaded``'s tokenizer (made once per loaded model): its
    tokens' bytes, and the stop tokens as the end of an answer."""
    if loaded.grammar_tokenizer is None:
        import llguidance.hf

        loaded.grammar_tokenizer = llguidance.hf.from_tokenizer(
            loaded.tokenizer, n_vocab=loaded.model.config.vocab_size, eos_token=list(loaded.stop_ids))
    return loaded.grammar_tokenizer


def grammar_processor(masks: list[GrammarMask], prompt_len: int):
    """A transformers logits processor that keeps each row of a generation to its grammar
    (``masks``, one per row)."""
    from transformers import LogitsProcessor

    class Grammar(LogitsProcessor):
        def __call__(self, input_ids, scores):
            for row, mask in enumerate(masks):
                if input_ids.shape[1] > prompt_len:
                    mask.consume(int(input_ids[row, -1]))
                scores[row] = mask.allowed(scores[row])
            return scores

    return Grammar()


def token_bytes(tokenizer, token: int) -> bytes:
    """The bytes a token stands for: a byte-level BPE token's own bytes (part of a
    character, perhaps), else the UTF-8 of its text. The bytes of an answer's tokens, put
    together, are its text's."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    piece = tokenizer.convert_ids_to_tokens(token)
    table = _byte_of_char(bytes_to_unicode)
    if isinstance(piece, str) and piece and token not in tokenizer.all_special_ids and all(c in table for c in piece):
        return bytes(table[c] for c in piece)
    return tokenizer.decode([token]).encode("utf-8")


@functools.cache
def _byte_of_char(bytes_to_unicode) -> dict[str, int]:
    return {char: byte for byte, char in bytes_to_unicode().items()}


def token_logprobs(tokenizer, tokens: list[int], logits: list, top: int) -> list[dict]:
    """OpenAI's ``logprobs.content``: each token with its log-probability, its UTF-8 bytes
    and the ``top`` most likely tokens at that step."""
    import torch

    def entry(token: int, logprob: float) -> dict:
        return {"token": tokenizer.decode([token]), "logprob": logprob, "bytes": list(token_bytes(tokenizer, token))}

    content = []
    for token, step in zip(tokens, logits, strict=False):
        logp = torch.log_softmax(step.float(), dim=-1)
        alternatives = []
        if top:
            best = torch.topk(logp, top)
            alternatives = [entry(int(i), float(v)) for v, i in zip(best.values, best.indices, strict=True)]
        content.append({**entry(token, float(logp[token])), "top_logprobs": alternatives})
    return content


def resolve(store: Store, model: str, default_track: str) -> Target:
    """``track`` (its deployed adapter), ``track@ADAPTER`` (name like ``main-a3`` or id),
    ``track@base`` or ``base`` (the default track's bare base)."""
    track_name, _, pick = model.partition("@")
    if track_name == "base" and not pick:
        track_name, pick = default_track, "base"
    track = store.get_track(track_name)
    if track is None:
        known = ", ".join(t.name for t in store.list_tracks())
        raise ModelNameError(f"model {model!r}: no track {track_name!r}; use a track ({known}), "
                             "TRACK@ADAPTER, TRACK@base or base")
    if not pick:
        return Target(track.name, track.base_version, store.deployed_adapter(track.name))
    if pick == "base":
        return Target(track.name, track.base_version, None)
    digits = pick.removeprefix(f"{track.name}-a")
    try:
        adapter = store.get_adapter(int(digits)) if digits.isdigit() else None
    except NotFoundError:
        adapter = None
    if adapter is None or adapter.track != track.name:
        raise ModelNameError(f"model {model!r}: track {track.name} has no adapter {pick!r} (GET /v1/models lists them)")
    if adapter.base_version != track.base_version:
        raise ModelNameError(f"model {model!r}: {adapter.name} was trained on base v{adapter.base_version}; "
                             f"track {track.name} is on v{track.base_version}")
    return Target(track.name, track.base_version, adapter)


class ModelPool:
    """The loaded models, shared by all requests.

    ``yielder`` (a :class:`honed.server.device_yield.DeviceYielder`, optional) is told
    the device when the first request chooses it, and from then on releases and restores
    the pool while trainers claim that device."""

    def __init__(self, workspace, store: Store, yielder=None) -> None:
        self.workspace, self.store, self.yielder = workspace, store, yielder
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a lease ended or a move is done
        self._models: dict[tuple[int, int | None], LoadedModel] = {}
        self._loading: dict[tuple[int, int | None], threading.Lock] = {}
        self._serving: dict[str, tuple[int, int | None]] = {}  # track -> key its default model name means now
        self._device_lock = threading.Lock()
        self.device = None  # the torch device of the models, chosen at the first request (torch loads then)
        self._load_device = None  # where a model loads now: the CPU while the device is lent to a trainer
        self._active = 0  # leases admitted and not ended yet, loading ones included
        self._moving = False  # models are moving between devices: new leases wait
        self.released: ModelReleased | None = None  # set: new leases are refused with it

    @contextmanager
    def lease(self, target: Target, *, is_default: bool) -> Iterator[LoadedModel]:
        """The loaded model for ``target``, kept in memory until the ``with`` ends;
        :class:`ModelReleased` while the models are released to a training job."""
        self._admit()
        try:
            with self._lock:
                if is_default:
                    self._serving[target.track] = target.key
                loading = self._loading.setdefault(target.key, threading.Lock())
            loaded = self._take(target.key)
            if loaded is None:
                with loading:  # one load per version, however many requests wait for it
                    loaded = self._take(target.key)
                    if loaded is None:
                        loaded = self._load(target)
                        loaded.users = 1  # counted before it is visible, so nothing drops it meanwhile
                        with self._lock:
                            self._models[target.key] = loaded
            try:
                yield loaded
            finally:
                with self._lock:
                    loaded.users -= 1
                    self._drop_unused()
        finally:
            with self._lock:
                self._active -= 1
                self._changed.notify_all()

    def _admit(self) -> None:
        """Count a new lease in, or refuse it while the models are released."""
        if self.device is None:
            with self._device_lock:
                if self.device is None:
                    from honed.training.model_loading import pick_device

                    device = pick_device()
                    self._load_device = device
                    if self.yielder is not None:
                        self.yielder.attach(self, device)  # a claim already made applies before the first load
                    self.device = device
        with self._lock:
            while self._moving:
                self._changed.wait()
            if (refusal := self.released) is not None:  # a fresh one: requests raise it side by side
                raise ModelReleased(refusal.job, refusal.device, refusal.since)
            self._active += 1

    def _take(self, key: tuple[int, int | None]) -> LoadedModel | None:
        """The loaded model for ``key`` with one more user, or None when it is not loaded."""
        with self._lock:
            loaded = self._models.get(key)
            if loaded is not None:
                loaded.users += 1
            return loaded

    def loaded(self) -> list[str]:
        """Labels of the versions in memory (for the health endpoint)."""
        with self._lock:
            return sorted(m.target.label for m in self._models.values())

    def serving_tracks(self) -> list[str]:
        """The tracks whose default model name has been asked for."""
        with self._lock:
            return sorted(self._serving)

    def release(self, refusal: ModelReleased) -> None:
        """Refuse new leases with ``refusal``, wait for those under way to end, then drop
        every model and give its memory back to the device."""
        with self._lock:
            self.released = refusal
            while self._active:
                self._changed.wait()
            dropped = [m.target.label for m in self._models.values()]
            self._models.clear()
        self._free_device_memory()
        log.info("serving: %s released for training on %s", ", ".join(dropped) or "no model", refusal.device)

    def restore(self) -> None:
        """Admit leases again after :meth:`release`; models load at their next request."""
        with self._lock:
            self.released = None

    def move_models(self, device) -> None:
        """Move every model to ``device`` (new ones load there too) between requests:
        new leases wait, those under way finish first."""
        with self._lock:
            self._moving = True
            while self._active:
                self._changed.wait()
            models = list(self._models.values())
        try:
            for loaded in models:
                loaded.model.to(device)
            leaving = self._load_device
            self._load_device = device
            log.info("serving: %d model(s) moved from %s to %s", len(models), leaving, device)
        finally:
            with self._lock:
                self._moving = False
                self._changed.notify_all()
        self._free_device_memory()

    def _free_device_memory(self) -> None:
        """Hand memory nobody references any more back to the accelerator."""
        import gc

        gc.collect()
        if self.device is not None and self.device.type in ("cuda", "mps"):
            import torch

            getattr(torch, self.device.type).empty_cache()

    def _drop_unused(self) -> None:
        serving = set(self._serving.values())
        for key in [k for k, m in self._models.items() if m.users == 0 and k not in serving]:
            log.info("serving: %s unloaded (no longer live, no request uses it)", self._models[key].target.label)
            del self._models[key]

    def _load(self, target: Target) -> LoadedModel:
        from honed.evaluation.exact_match import stop_token_ids
        from honed.training.model_loading import load_base_model, load_tokenizer, with_adapter

        started = time.perf_counter()
        base_path = self.workspace.resolve_base_path(self.store, target.base_version)
        model = load_base_model(base_path, self._load_device)
        if target.adapter is not None:
            model = with_adapter(model, target.adapter.path)
        model.eval()
        tokenizer = load_tokenizer(base_path)
        log.info("serving: %s loaded in %.1fs", target.label, time.perf_counter() - started)
        stop_ids = stop_token_ids(model, tokenizer)
        loop = None
        if (width := self.workspace.settings.server.max_batch) > 0:
            from honed.server.batching import DecodeLoop

            loop = DecodeLoop(model, tokenizer, stop_ids, width)
        return LoadedModel(target, model, tokenizer, stop_ids, loop=loop)


class PromptTooLong(ValueError):
    """The prompt is longer than ``server.max_prompt_tokens``; the message says by how much."""


def encode_prompt(loaded: LoadedModel, messages: list[dict], max_tokens: int | None = None):
    """``messages`` after the chat template, as the model's input tensors; PromptTooLong when
    that is more than ``max_tokens`` tokens. Needs no lock: call it before waiting for one."""
    import torch

    from honed.data.chat_encoding import encode_chat

    # A control token typed in a message is text: a user cannot end their turn and forge the assistant's.
    ids = encode_chat(loaded.tokenizer, messages, add_generation_prompt=True).input_ids
    batch = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    size = len(ids)
    if max_tokens is not None and size > max_tokens:
        raise PromptTooLong(f"messages: the prompt is {size:,} tokens after the chat template; at most "
                            f"{max_tokens:,} are answered (server.max_prompt_tokens): shorten the conversation")
    return batch


def generate(loaded: LoadedModel, prompt, max_tokens: int, streamer=None,
             stop: threading.Event | None = None, sampling: Sampling = GREEDY, options: Options = PLAIN) -> Answer:
    """The answer to ``prompt`` (the first of :func:`generate_choices`'s)."""
    return generate_choices(loaded, prompt, max_tokens, streamer, stop, sampling, options)[0]


def generate_choices(loaded: LoadedModel, prompt, max_tokens: int, streamer=None,
                     stop: threading.Event | None = None, sampling: Sampling = GREEDY,
                     options: Options = PLAIN) -> list[Answer]:
    """The ``options.n`` answers to ``prompt`` (from :func:`encode_prompt`), drawn as
    ``sampling`` says, with ``options``' stop strings, penalties and log-probabilities;
    with ``streamer`` (a transformers streamer, for one answer) the text is also handed out
    piece by piece as it is generated. Setting ``stop`` ends the generation after the
    decode step under way (finish_reason ``cancelled``): nobody waits for the rest. Greedy
    answers are all the same: one is decoded and given ``n`` times."""
    if loaded.loop is not None:
        return _generate_in_loop(loaded, prompt, max_tokens, streamer, stop, sampling, options)
    import torch
    from transformers import LogitsProcessorList

    from honed.evaluation.exact_match import decode_until_stop

    tokenizer = loaded.tokenizer
    batch = {name: tensor.to(loaded.model.device) for name, tensor in prompt.items()}
    prompt_len = int(batch["input_ids"].shape[1])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else loaded.stop_ids[0]
    criteria = stop_when_set(stop) if stop is not None else None
    rows = 1 if sampling.greedy else options.n
    extra: dict[str, Any] = {}
    if rows > 1:
        extra["num_return_sequences"] = rows
    if options.stop:
        extra.update(stop_strings=list(options.stop), tokenizer=tokenizer)
    if options.logprobs:
        extra.update(output_logits=True, return_dict_in_generate=True)
    # In the decode loop's order: penalties, the grammar, then temperature and top_p (given
    # here, as transformers would put its own warpers before the processors it is handed).
    processors = LogitsProcessorList(
        [penalties(options.presence_penalty, options.frequency_penalty, prompt_len)] if options.penalized else [])
    if options.grammar is not None:
        tokens = grammar_tokenizer(loaded)
        processors.append(grammar_processor([GrammarMask(tokens, options.grammar) for _ in range(rows)], prompt_len))
    drawing = sampling.generate_kwargs()
    if not sampling.greedy:
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        processors.append(TemperatureLogitsWarper(sampling.temperature))
        if sampling.top_p < 1.0:
            processors.append(TopPLogitsWarper(sampling.top_p))
        drawing.update(temperature=1.0, top_p=1.0)
    with loaded.lock, torch.inference_mode():
        if stop is not None and stop.is_set():  # the client left while the request waited for the model
            if streamer is not None:
                streamer.end()  # as generate() would: whoever waits for the next piece is let go
            return [Answer("", prompt_len, 0, "cancelled")] * options.n
        if not sampling.greedy:
            # One generation at a time holds the model's lock, so seeding torch's generator here
            # decides this answer's draws alone.
            sampling.seed_torch()
        decode_threads.apply()  # fewer threads while a trainer shares the CPU
        output = loaded.model.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=max_tokens,
            eos_token_id=loaded.stop_ids, pad_token_id=pad_id, use_cache=True, streamer=streamer,
            stopping_criteria=criteria, logits_processor=processors, **drawing, **extra)
    sequences = output.sequences if options.logprobs else output
    answers = []
    for row in range(rows):
        new = sequences[row, prompt_len:].tolist()
        # A row that ends before the others (its stop token or string) is padded after it.
        cut = next((k for k, token in enumerate(new) if token in loaded.stop_ids or (rows > 1 and token == pad_id)),
                   len(new))
        text, stopped = cut_at_stop(decode_until_stop(tokenizer, new[:cut], loaded.stop_ids), options.stop)
        finish = ("stop" if stopped or cut < len(new) else "cancelled" if stop is not None and stop.is_set()
                  else "length")
        logprobs = (token_logprobs(tokenizer, new[:cut], [step[row] for step in output.logits], options.top_logprobs)
                    if options.logprobs else None)
        answers.append(Answer(text.strip(), prompt_len, cut, finish, logprobs))
    return answers * (options.n // rows)


def _generate_in_loop(loaded: LoadedModel, prompt, max_tokens: int, streamer, stop: threading.Event | None,
                      sampling: Sampling, options: Options) -> list[Answer]:
    """:func:`generate_choices` through the model's decode loop (``server.max_batch`` > 0,
    :mod:`honed.server.batching`), beside the other requests on the model: the same
    answers, the stop strings, penalties and log-probabilities applied per row; sampled
    answers draw with seeds ``seed``, ``seed + 1``, ... from generators of their own."""
    from honed.evaluation.exact_match import decode_until_stop
    from honed.server.batching import Row, fresh_seed

    ids = prompt["input_ids"][0].tolist()
    if stop is not None and stop.is_set():  # the client left while the request waited for the model
        if streamer is not None:
            streamer.end()  # as generate() would: whoever waits for the next piece is let go
        return [Answer("", len(ids), 0, "cancelled")] * options.n
    count = 1 if sampling.greedy else options.n
    seed = sampling.seed if sampling.seed is not None else fresh_seed()
    rows = [Row(prompt=ids, max_tokens=max_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
                seed=(seed + k) % 2**63, presence_penalty=options.presence_penalty,
                frequency_penalty=options.frequency_penalty, stop=options.stop,
                top_logprobs=options.top_logprobs if options.logprobs else None,
                grammar=GrammarMask(grammar_tokenizer(loaded), options.grammar) if options.grammar else None,
                streamer=streamer if k == 0 else None, cancel=stop) for k in range(count)]
    loaded.loop.run(rows)
    answers = []
    for row in rows:
        text = row.text if row.text is not None else decode_until_stop(loaded.tokenizer, row.tokens, loaded.stop_ids)
        text, met = cut_at_stop(model_text(text), options.stop)
        finish = "stop" if met else row.finish_reason
        logprobs = None
        if options.logprobs:
            logprobs = [{**_token_entry(loaded.tokenizer, token, logprob),
                         "top_logprobs": [_token_entry(loaded.tokenizer, t, lp) for t, lp in best]}
                        for token, logprob, best in row.logprobs]
        answers.append(Answer(text.strip(), len(ids), len(row.tokens), finish, logprobs))
    return answers * (options.n // count)


def _token_entry(tokenizer, token: int, logprob: float) -> dict:
    """One token as OpenAI's logprobs list it: its text, log-probability and UTF-8 bytes."""
    return {"token": tokenizer.decode([token]), "logprob": logprob, "bytes": list(token_bytes(tokenizer, token))}


def stop_when_set(event: threading.Event):
    """Transformers stopping criteria, checked after every decode step: stop once ``event`` is set."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopWhenSet(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopWhenSet()])


class DeltaStreamer:
    """A transformers streamer that turns generated tokens into text deltas on a queue
    (None at the end): the prompt and the stop token are not part of them, a delta never
    ends inside a multi-byte character, and text that may be the start of one of the
    ``stop`` strings is held back until it is known not to be (a stop string is never sent,
    nor anything after it)."""

    def __init__(self, tokenizer, stop_ids: list[int], stop: tuple[str, ...] = ()) -> None:
        import queue

        self.tokenizer, self.stop_ids, self.stop = tokenizer, set(stop_ids), stop
        self.deltas: queue.Queue = queue.Queue()
        self.tokens: list[int] = []
        self.sent = ""
        self.prompt_seen = False
        self.stopped = False
        self.closed = False  # a stop string was met: nothing more is sent

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate() hands the prompt over first
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            if self.stopped or token in self.stop_ids:
                self.stopped = True
                break
            self.tokens.append(token)
        self._send(final=False)

    def _send(self, final: bool) -> None:
        if self.closed:
            return
        text = model_text(self.tokenizer.decode(self.tokens, skip_special_tokens=True)).lstrip()
        if not final and text.endswith("\ufffd"):
            return  # half a character: wait for more
        text, met = cut_at_stop(text, self.stop)
        ready = text if met or final else text[:len(text) - _held_back(text, self.stop)]
        if ready.startswith(self.sent) and len(ready) > len(self.sent):
            self.deltas.put(ready[len(self.sent):])
            self.sent = ready
        if met:
            self.closed = self.stopped = True

    def end(self) -> None:
        self._send(final=True)
        self.deltas.put(None)


def _held_back(text: str, stop: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` could begin one of the ``stop`` strings."""
    return max((k for s in stop for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])),
               default=0)

