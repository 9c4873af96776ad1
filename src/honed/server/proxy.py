"""Proxy capture: with ``[server] upstream_url`` set, ``/v1/chat/completions`` forwards each
request to an OpenAI-compatible engine (vLLM, llama.cpp's server, Ollama, a hosted API)
and records the exchange as an experience, as the built-in server records its own:
applications change only their ``base_url``.

- The request goes on as the client sent it, with ``model`` mapped from the track to the
  upstream's name (``server.upstream_models``; ``{deployed}`` in a name is the track's
  live version, so a deploy switches new requests to it).
- A streamed answer passes through piece by piece as the upstream sends it, never
  buffered whole; honed adds one chunk before ``[DONE]`` with its ``honed`` field.
- The upstream's errors come back as the upstream gave them: its status and body.
- An exchange is recorded only once its answer is complete: an upstream that fails, times
  out (504 naming ``server.upstream_timeout_s``) or drops the stream midway leaves no
  experience, and a client that leaves midway neither.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from honed.store import Store, StoreError

log = logging.getLogger(__name__)


def _client(app, settings) -> httpx.AsyncClient:
    """The app's one client to the upstream: its connections are kept alive between
    requests (and its TLS context made once, which alone costs tens of milliseconds)."""
    if app.state.upstream is None:
        timeout = httpx.Timeout(settings.upstream_timeout_s, connect=min(10.0, settings.upstream_timeout_s))
        app.state.upstream = httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_keepalive_connections=32))
    return app.state.upstream


def route(settings, store: Store, model: str, default_track: str) -> tuple[str, int, Any, str]:
    """For a request's ``model``: its track, the track's base version and deployed adapter
    (what the experience records), and the upstream's name for the track's model now
    (``{deployed}`` in it: the live version's name). One read of each."""
    name = model.partition("@")[0]
    track = store.get_track(default_track if name == "base" else name)
    if track is None:
        known = ", ".join(t.name for t in store.list_tracks())
        raise HTTPException(404, f"model {model!r}: no track {name!r} to proxy for; use a track ({known})")
    adapter = store.deployed_adapter(track.name)
    upstream = settings.upstream_models.get(track.name, track.name)
    live = adapter.name if adapter is not None else f"{track.name}-base-v{track.base_version}"
    return track.name, track.base_version, adapter, upstream.replace("{deployed}", live)


def _headers(settings) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if settings.upstream_api_key_env:
        key = os.environ.get(settings.upstream_api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
    return headers


def _timeout_error(settings, exc: Exception) -> HTTPException:
    return HTTPException(504, f"the upstream {settings.upstream_url} did not answer within "
                              f"server.upstream_timeout_s = {settings.upstream_timeout_s:g} s ({type(exc).__name__})")


def _unreachable(settings, exc: Exception) -> HTTPException:
    return HTTPException(502, f"the upstream {settings.upstream_url} could not be reached: {type(exc).__name__}: {exc}")


async def proxy_chat(raw: dict[str, Any], body, request: Request, workspace, store: Store, started: float) -> Response:
    """Forward one chat request upstream; answer as the upstream did, with honed's experience id."""
    settings = workspace.settings.server
    track, base_version, adapter, name = await run_in_threadpool(route, settings, store, body.model,
                                                                 workspace.settings.track)
    forwarded = {**raw, "model": name}
    url = f"{settings.upstream_url}/chat/completions"
    messages = [m.model_dump() for m in body.messages]

    def record(text: str, usage: dict | None, model: str | None) -> Any:
        """The exchange as an experience; or, when the store refuses it (an answer longer than
        a training record may be, a store that is down), the reason: the client still gets
        the upstream's answer, never an error for what honed could not keep."""
        usage = usage or {}
        meta = {"upstream": settings.upstream_url, "upstream_model": model or name,
                **({"user": body.user} if body.user else {}), **(body.metadata or {})}
        try:
            return store.add_experience(
                track=track, messages=messages, output=text, adapter_id=adapter.id if adapter else None,
                base_version=base_version, source="served", latency_ms=(time.perf_counter() - started) * 1000,
                prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"),
                meta=meta)
        except StoreError as exc:
            log.warning("proxy: the exchange on track %s was not recorded: %s", track, exc)
            return str(exc)

    def honed_field(experience) -> dict:
        if isinstance(experience, str):
            return {"experience_id": None, "not_recorded": experience, "track": track,
                    "served_by": f"upstream:{name}"}
        return {"experience_id": experience.id, "track": track, "adapter": adapter.id if adapter else None,
                "served_by": f"upstream:{name}"}

    client = _client(request.app, settings)
    if not body.stream:
        try:
            answer = await client.post(url, json=forwarded, headers=_headers(settings))
        except httpx.TimeoutException as exc:
            raise _timeout_error(settings, exc) from None
        except httpx.HTTPError as exc:
            raise _unreachable(settings, exc) from None
        if answer.status_code != 200:
            return Response(answer.content, status_code=answer.status_code,
                            media_type=answer.headers.get("content-type", "application/json"))
        try:
            data = answer.json()
            text = data["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise HTTPException(502, f"the upstream {settings.upstream_url} answered 200 with a body that is not a "
                                     f"chat completion: {answer.text[:200]!r}") from None
        experience = await run_in_threadpool(record, text, data.get("usage"), data.get("model"))
        kept = {} if isinstance(experience, str) else {"X-Honed-Experience-Id": str(experience.id)}
        return JSONResponse({**data, "honed": honed_field(experience)}, headers=kept)

    try:
        upstream = await client.send(client.build_request("POST", url, json=forwarded, headers=_headers(settings)),
                                     stream=True)
    except httpx.TimeoutException as exc:
        raise _timeout_error(settings, exc) from None
    except httpx.HTTPError as exc:
        raise _unreachable(settings, exc) from None
    if upstream.status_code != 200:
        content = await upstream.aread()
        await upstream.aclose()
        return Response(content, status_code=upstream.status_code,
                        media_type=upstream.headers.get("content-type", "application/json"))

    async def events() -> AsyncIterator[bytes]:
        pieces: list[str] = []
        usage: dict | None = None
        model: str | None = None
        last_id, created = "", int(time.time())
        complete = False
        try:
            async for line in upstream.aiter_lines():
                if line.strip() == "data: [DONE]":
                    complete = True
                    break
                if line.startswith("data:"):
                    try:
                        chunk = json.loads(line[5:])
                    except ValueError:
                        chunk = {}
                    if isinstance(chunk, dict):
                        for choice in chunk.get("choices") or []:
                            if choice.get("index", 0) == 0:
                                pieces.append((choice.get("delta") or {}).get("content") or "")
                        usage = chunk.get("usage") or usage
                        model = chunk.get("model") or model
                        last_id, created = chunk.get("id", last_id), chunk.get("created", created)
                yield (line + "\n").encode()
            if not complete:  # the upstream ended the stream without its end: the answer is not whole
                yield _error_event("the upstream's stream ended before [DONE]; the answer is incomplete "
                                   "and was not recorded")
                return
            experience = await run_in_threadpool(record, "".join(pieces), usage, model)
            extra = {"id": last_id, "object": "chat.completion.chunk", "created": created, "model": model or name,
                     "choices": [], "honed": honed_field(experience)}
            yield f"data: {json.dumps(extra)}\n\ndata: [DONE]\n\n".encode()
        except httpx.TimeoutException as exc:
            yield _error_event(_timeout_error(settings, exc).detail)
        except httpx.HTTPError as exc:
            yield _error_event(f"the upstream's stream broke off: {type(exc).__name__}: {exc}; the answer is "
                               "incomplete and was not recorded")
        finally:
            await upstream.aclose()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


def _error_event(message: str) -> bytes:
    return f"data: {json.dumps({'error': {'message': message}})}\n\n".encode()
