"""OpenAI-compatible serving: ``/v1/chat/completions`` (with streaming) and ``/v1/models``.

``model`` is a track (its deployed adapter), ``TRACK@ADAPTER``, ``TRACK@base`` or
``base``. Every answer is stored as an experience; its id comes back in the answer's
``honed`` field (and the ``X-Honed-Experience-Id`` header), so feedback can be attached
later with ``POST /v1/experiences/{id}/feedback``. The official ``openai`` SDK works
unchanged (``completion.model_extra["honed"]["experience_id"]``).

While the models are released to a training job (``server.on_training = "unload"``),
chat requests get 503 with a Retry-After header and a message naming the job. A prompt
longer than ``server.max_prompt_tokens`` (counted after the chat template) gets 400
before it waits for the model. A client that goes away (a stream closed, or a request
that is not streamed abandoned) stops its generation after the decode step under way,
and its cut-short answer is not stored.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from typing import Literal

import anyio
from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from honed.data.chat_encoding import ChatEncodingError
from honed.server.api_experiences import ChatMessage
from honed.server.deps import StoreDep, WorkspaceDep
from honed.server.serving import (
    DeltaStreamer,
    GrammarError,
    ModelNameError,
    ModelPool,
    ModelReleased,
    Options,
    PromptTooLong,
    Sampling,
    encode_prompt,
    generate,
    generate_choices,
    resolve,
)
from honed.store import Store, StoreError

router = APIRouter(prefix="/v1", tags=["openai"])
DISCONNECT_POLL_S = 0.25  # how often a request that is not streamed looks whether its client is still there


# OpenAI's request parameters the built-in server does not implement, and the value of
# each that asks for nothing (what a client that never heard of it sends, if anything).
UNSUPPORTED = {"logit_bias": None, "tools": None,
               "tool_choice": None, "functions": None, "function_call": None, "audio": None, "prediction": None}
MAX_STOP = 4  # as OpenAI: up to 4 stop sequences


class JsonSchemaFormat(BaseModel):
    """OpenAI's ``response_format.json_schema``: the schema an answer must follow."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: dict = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's ``response_format``: ``text`` (no constraint), ``json_object`` (the answer
    is one JSON object) or ``json_schema`` (a JSON value that follows ``json_schema.schema``)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is given with type 'json_schema', and only with it")
        return self


class ChatRequest(BaseModel):
    """OpenAI's chat completion request. ``temperature``, ``top_p`` and ``seed`` decide the
    sampling (see :class:`~honed.evaluation.exact_match.Sampling`); a parameter honed does not
    implement (:data:`UNSUPPORTED`) is refused with 400 when it asks for anything, never
    ignored."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=8192)
    max_completion_tokens: int | None = Field(None, ge=1, le=8192)
    stream: bool = False
    n: int = Field(1, ge=1, le=8)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    user: str | None = None
    metadata: dict | None = None

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("a stop sequence is empty")
        return value

    @model_validator(mode="after")
    def _logprobs_asked(self) -> ChatRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs = true")
        return self

    @model_validator(mode="after")
    def _json_asked_for(self) -> ChatRequest:
        # OpenAI's own rule: a model told to answer in JSON without being asked for it may
        # produce whitespace until its token budget runs out.
        if (self.response_format is not None and self.response_format.type == "json_object"
                and not any("json" in m.content.lower() for m in self.messages)):
            raise ValueError("response_format json_object: the messages must ask for JSON (contain the word "
                             "'JSON'), as OpenAI requires")
        return self

    def grammar(self) -> str | None:
        """llguidance's grammar for ``response_format``; None for plain text."""
        from honed.server.serving import json_grammar

        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        return json_grammar(fmt.json_schema.schema_ if fmt.json_schema is not None else None)

    def unstreamable(self) -> str | None:
        """Why the built-in server cannot stream this request, if it cannot."""
        if self.stream and self.n > 1:
            return "n > 1 is answered whole, not streamed: use stream = false, or n = 1"
        if self.stream and self.logprobs:
            return "logprobs come with whole answers, not streamed: use stream = false"
        return None

    def options(self, grammar: str | None = None) -> Options:
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return Options(tuple(stops), self.n, self.presence_penalty or 0.0, self.frequency_penalty or 0.0,
                       bool(self.logprobs), self.top_logprobs or 0, grammar)

    def unsupported(self) -> list[str]:
        """The parameters given that honed does not implement, each with its value."""
        extra = self.model_extra or {}
        return [f"{name} = {json.dumps(extra[name])}" for name, neutral in UNSUPPORTED.items()
                if name in extra and extra[name] is not None and extra[name] != neutral]

    def sampling(self, default_temperature: float) -> Sampling:
        temperature = self.temperature if self.temperature is not None else default_temperature
        return Sampling(temperature, self.top_p if self.top_p is not None else 1.0, self.seed)


def _meta(body: ChatRequest, sampling: Sampling) -> dict | None:
    """What an experience keeps of the request beyond its messages: the caller's ``user``
    and ``metadata``, how a sampled answer was drawn (a greedy one needs no note), and the
    stop strings and penalties it was given, if any."""
    meta = {**({"user": body.user} if body.user else {}), **(body.metadata or {})}
    if not sampling.greedy:
        meta["sampling"] = sampling.described()
    options = body.options()
    if options.stop or options.penalized:
        meta["decoding"] = {"stop": list(options.stop), "presence_penalty": options.presence_penalty,
                            "frequency_penalty": options.frequency_penalty}
    if body.response_format is not None and body.response_format.type != "text":
        meta["response_format"] = body.response_format.model_dump(mode="json", by_alias=True, exclude_none=True)
    return meta or None


def _usage(answer) -> dict:
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens}


def _error_event(exc: Exception) -> str:
    return f"data: {json.dumps({'error': {'message': str(exc)}})}\n\n"


def _released(exc: ModelReleased, store: Store, settings) -> HTTPException:
    """The 503 for a request refused while the models are released: Retry-After is
    ``server.retry_after_s``, or the training job's own estimate when that is sooner."""
    wait = settings.retry_after_s
    if exc.job is not None:
        try:
            eta = (store.get_job(exc.job).progress or {}).get("eta_s")
        except StoreError:
            eta = None
        if isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0:
            wait = min(wait, max(1, math.ceil(eta)))
    return HTTPException(503, f"{exc}; retry after {wait} s", headers={"Retry-After": str(wait)})


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    owned_by: str
    created: int


class ModelList(BaseModel):
    """OpenAI's model list."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


@router.get("/models", response_model=ModelList)
def list_models(store: StoreDep) -> dict:
    """Tracks (their live model), each adapter that could serve as ``TRACK@ADAPTER``, and the bare bases."""
    data = []
    for track in store.list_tracks():
        data.append({"id": track.name, "object": "model", "owned_by": "honed", "created": 0})
        data.append({"id": f"{track.name}@base", "object": "model", "owned_by": "honed", "created": 0})
        for adapter in store.list_adapters(track.name):
            if adapter.base_version == track.base_version and adapter.state != "rejected":
                data.append({"id": f"{track.name}@{adapter.name}", "object": "model", "owned_by": "honed",
                             "created": int(adapter.created_at.timestamp())})
    return {"object": "list", "data": data}


@router.post("/chat/completions")
async def chat_completions(body: ChatRequest, request: Request, workspace: WorkspaceDep, store: StoreDep):
    """Answer with the track's live model, record the interaction as an experience."""
    started = time.perf_counter()
    if workspace.settings.server.upstream_url:
        from honed.server.proxy import proxy_chat

        return await proxy_chat(await request.json(), body, request, workspace, store, started)
    messages = [m.model_dump() for m in body.messages]
    if unstreamable := body.unstreamable():
        raise HTTPException(400, unstreamable)
    if unsupported := body.unsupported():
        raise HTTPException(400, f"{'; '.join(unsupported)}: not supported by honed's built-in server (it "
                                 "implements temperature, top_p, seed, stop, n, presence_penalty, "
                                 "frequency_penalty, logprobs, top_logprobs, response_format, max_tokens and "
                                 "stream); leave them out")
    sampling = body.sampling(workspace.settings.server.default_temperature)
    try:
        options = body.options(body.grammar())
    except GrammarError as exc:
        raise HTTPException(400, f"response_format.json_schema.schema: {exc}") from None
    if messages[-1]["role"] == "assistant":
        raise HTTPException(400, "messages: the last message is the assistant's; end with the user's turn "
                                 "to get an answer")
    try:
        target = resolve(store, body.model, workspace.settings.track)
    except ModelNameError as exc:
        raise HTTPException(404, str(exc)) from None
    pool: ModelPool = request.app.state.model_pool
    is_default = "@" not in body.model and body.model != "base"
    max_tokens = body.max_completion_tokens or body.max_tokens or workspace.settings.eval.max_new_tokens
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())

    def record(text: str, answer):
        return store.add_experience(
            track=target.track, messages=messages, output=text,
            adapter_id=target.adapter.id if target.adapter else None,
            base_version=target.base_version, source="served", latency_ms=(time.perf_counter() - started) * 1000,
            prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens,
            meta=_meta(body, sampling),
            max_chars=None)  # bounded already: server.max_prompt_tokens, then max_tokens

    def honed_field(experience) -> dict:
        return {"experience_id": experience.id, "track": target.track,
                "adapter": target.adapter.id if target.adapter else None, "served_by": target.label}

    limit = workspace.settings.server.max_prompt_tokens
    stop = threading.Event()  # set when the client has gone: generation ends after the step under way

    if not body.stream:
        def answer_now():
            with pool.lease(target, is_default=is_default) as loaded:
                answers = generate_choices(loaded, encode_prompt(loaded, messages, limit), max_tokens, stop=stop,
                                           sampling=sampling, options=options)
            return answers, None if stop.is_set() else [record(a.text, a) for a in answers]

        try:
            answers, experiences = await _until_disconnected(request, stop, answer_now)
        except ModelReleased as exc:
            raise await run_in_threadpool(_released, exc, store, workspace.settings.server) from None
        except ChatEncodingError as exc:  # a control token in a message, and a template that rewrites messages
            raise HTTPException(400, f"messages: {exc}") from None
        except PromptTooLong as exc:
            raise HTTPException(400, str(exc)) from None
        if experiences is None:  # nobody is listening; an answer cut short is not kept as an experience
            return Response(status_code=499)
        completion_tokens = sum(a.completion_tokens for a in answers)
        return JSONResponse({
            "id": completion_id, "object": "chat.completion", "created": created, "model": target.label,
            "choices": [{"index": i, "message": {"role": "assistant", "content": a.text},
                         "finish_reason": a.finish_reason,
                         "logprobs": {"content": a.logprobs} if a.logprobs is not None else None,
                         "honed": {"experience_id": e.id}}
                        for i, (a, e) in enumerate(zip(answers, experiences, strict=True))],
            "usage": {"prompt_tokens": answers[0].prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": answers[0].prompt_tokens + completion_tokens},
            "honed": {**honed_field(experiences[0]), "experience_ids": [e.id for e in experiences]}},
            headers={"X-Honed-Experience-Id": str(experiences[0].id)})

    outcome: dict = {}  # what the generating thread hands over: streamer, answer or error
    ready = threading.Event()

    def generate_streaming():
        try:
            with pool.lease(target, is_default=is_default) as loaded:
                prompt = encode_prompt(loaded, messages, limit)
                outcome["streamer"] = DeltaStreamer(loaded.tokenizer, loaded.stop_ids, options.stop)
                ready.set()
                outcome["answer"] = generate(loaded, prompt, max_tokens, streamer=outcome["streamer"], stop=stop,
                                             sampling=sampling, options=options)
        except Exception as exc:  # noqa: BLE001 - reported to the client in the stream
            outcome["error"] = exc
            ready.set()
            if "streamer" in outcome:
                outcome["streamer"].end()

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        payload = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": target.label,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
        return f"data: {json.dumps(payload)}\n\n"

    # The lease is taken and the prompt measured before the response starts, so that a
    # refusal is a 503 or a 400, not a stream.
    worker = threading.Thread(target=generate_streaming, name="honed-generate", daemon=True)
    worker.start()
    await anyio.to_thread.run_sync(ready.wait)
    if isinstance(outcome.get("error"), ModelReleased):
        raise await run_in_threadpool(_released, outcome["error"], store, workspace.settings.server)
    if isinstance(outcome.get("error"), PromptTooLong):
        raise HTTPException(400, str(outcome["error"]))
    if isinstance(outcome.get("error"), ChatEncodingError):
        raise HTTPException(400, f"messages: {outcome['error']}")

    async def events():
        if "error" in outcome:
            yield _error_event(outcome["error"])
            return
        streamer = outcome["streamer"]
        try:
            yield chunk({"role": "assistant", "content": ""})
            pieces = []
            # abandon_on_cancel: a client that leaves is noticed at once, not at the next delta
            while (delta := await anyio.to_thread.run_sync(streamer.deltas.get, abandon_on_cancel=True)) is not None:
                if await request.is_disconnected():
                    return
                pieces.append(delta)
                yield chunk({"content": delta})
            await anyio.to_thread.run_sync(worker.join)
            if "error" in outcome:
                yield _error_event(outcome["error"])
                return
            answer = outcome["answer"]
            experience = await run_in_threadpool(record, "".join(pieces), answer)
            yield chunk({}, answer.finish_reason, usage=_usage(answer), honed=honed_field(experience))
            yield "data: [DONE]\n\n"
        finally:
            # Reached early only when the client went away (cancelled, closed, or seen
            # disconnected): the rest is not generated and nothing is recorded.
            stop.set()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


async def _until_disconnected(request: Request, stop: threading.Event, work):
    """``work()`` in a worker thread; meanwhile, ``stop`` is set if the client disconnects."""
    outcome: dict = {}

    async with anyio.create_task_group() as group:
        async def watch():
            while not await request.is_disconnected():
                await anyio.sleep(DISCONNECT_POLL_S)
            stop.set()

        async def run():
            try:
                outcome["value"] = await run_in_threadpool(work)
            except Exception as exc:  # noqa: BLE001 - raised again below, outside the task group
                outcome["error"] = exc
            group.cancel_scope.cancel()

        group.start_soon(watch)
        group.start_soon(run)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
