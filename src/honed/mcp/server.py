"""The MCP server of one workspace, built on the official SDK's ``MCPServer``.

Tools are thin: each calls the function its CLI command and HTTP route call
(:mod:`honed.daemon.control`, :mod:`honed.registry.deployment`, the Store API) and
answers with the same JSON (:mod:`honed.store.serialize`), so a job or an adapter looks alike
wherever a program reads it. honed's own errors (an unknown job, a deploy the gates
refuse, a bad feedback value) come back as tool errors carrying honed's message; any
other exception is the SDK's generic "Error executing tool", with the traceback in the
server's log on stderr (stdout is the protocol channel under stdio). The server holds
one store open for its lifetime, as the HTTP app does.

A client may only make the server read files under the workspace or ``[mcp]
allowed_dirs``, and answers name the workspace's files by workspace-relative names
(:mod:`honed.mcp.paths`): over HTTP the client is not on the server's machine.
"""

from __future__ import annotations

import functools
import hmac
import json
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from honed import __version__
from honed.config import SettingsError
from honed.daemon import control
from honed.daemon.control import ControlError
from honed.daemon.status import status_info
from honed.learning.trigger import LearnError
from honed.mcp.paths import PathRefusedError, confined_path
from honed.registry import deployment
from honed.registry.deployment import DeployError
from honed.registry.tracks import TrackError
from honed.server_paths import PathHider, public_status
from honed.states import Command, JobState, Priority
from honed.store import NotFoundError, Store, StoreError
from honed.store.serialize import control_result, deleted_experience, deploy_result, plain
from honed.workspace import Workspace

DEFAULT_HTTP_PORT = 8322  # beside the HTTP API's 8321

# The errors honed raises for a request it cannot carry out; their messages are written
# for the person (or model) who asked, so they travel to the client as they are.
HONED_ERRORS = (ControlError, DeployError, StoreError, TrackError, SettingsError, LearnError, PathRefusedError)

# Literals over honed.states' enums: the schema the client sees lists the allowed values
# inline (an enum would be a $ref some clients never follow).
JobStateArg = Literal[tuple(JobState)]  # type: ignore[valid-type]
PriorityArg = Literal[tuple(Priority)]  # type: ignore[valid-type]
CommandArg = Literal[tuple(Command)]  # type: ignore[valid-type]
TrackArg = Annotated[str | None, Field(description="Track (default: the workspace's track, usually 'main').")]

INSTRUCTIONS = """\
honed keeps a local language model learning: it trains LoRA adapters from queued jobs,
evaluates each candidate against quality gates and deploys the ones that pass.
A typical session: `status`; `train_model` on dataset ids or JSONL files (answers at once
with the job); `get_job` until its state is succeeded, rejected or failed; `list_adapters`
to see the verdict; `deploy`, `approve` or `rollback`. Applications report what the model
answered with `log_experience` and what it was worth with `give_feedback`;
`exclude_experience` keeps one out of training, `delete_experience` removes it.
Resources: honed://status, honed://jobs/{job_id}/events, honed://runs/{run_id}/metrics
(add ?kind=eval or ?kind=layers for those curves)."""


class ChatMessage(BaseModel):
    """One message of a conversation."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str


def _adapter(adapter) -> dict[str, Any]:
    out = plain(adapter)
    out.pop("path", None)  # a server path, as the HTTP API leaves it out
    return out


def _dataset(dataset) -> dict[str, Any]:
    out = plain(dataset)
    for key in ("source_path", "stored_path", "reject_path"):
        out.pop(key, None)
    return out


class WorkspaceTools:
    """The tools and resources of one workspace. ``store`` is opened by the server's
    lifespan and closed when it ends (see :func:`create_server`)."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.store: Store | None = None
        self.paths = PathHider(workspace)

    def _status(self) -> dict[str, Any]:
        return public_status(self.workspace, self.store, plain(status_info(self.workspace, self.store)))

    def _json(self, value: Any) -> str:
        return json.dumps(self.paths.answer(plain(value)), indent=2, default=str)

    # --- tools that read -----------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Where the workspace stands: whether the daemon runs, the running job with its
        progress (step, loss, tokens/s, ETA), the queue, each track with its deployed
        adapter, the base model and the latest runs."""
        return self._status()

    def list_jobs(self, states: list[JobStateArg] | None = None,
                  limit: Annotated[int, Field(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
        """Training jobs, newest first; `states` keeps only jobs in those states."""
        jobs = self.store.list_jobs(states=tuple(states) if states else None)
        jobs.sort(key=lambda j: j.id, reverse=True)
        return plain(jobs[:limit])

    def get_job(self, job_id: int) -> dict[str, Any]:
        """One job in full (state, progress, error, run id, timestamps), with its run's
        checkpoints and the adapter it produced (with evaluation and gate verdict)."""
        job = self.store.get_job(job_id)
        out = plain(job)
        # A job gets its run id when claimed, a moment before the trainer records the run.
        run = self.store.get_run(job.run_id) if job.run_id else None
        out["checkpoints"] = [{k: v for k, v in plain(c).items() if k != "path"}
                              for c in (self.store.list_checkpoints(run.id) if run else [])]
        out["adapters"] = [_adapter(a) for a in self.store.list_adapters(job.track) if a.job_id == job.id]
        return out

    def list_datasets(self, track: TrackArg = None) -> list[dict[str, Any]]:
        """Datasets added to the workspace, newest first: their ids are what
        `train_model` takes."""
        return [_dataset(d) for d in sorted(self.store.list_datasets(track), key=lambda d: d.id, reverse=True)]

    def list_adapters(self, track: TrackArg = None) -> list[dict[str, Any]]:
        """Adapters the runs produced, newest first, with state (candidate,
        awaiting_approval, deployed, rejected, retired), evaluation and gate verdict."""
        return [_adapter(a) for a in self.store.list_adapters(track)]

    # --- tools that add ------------------------------------------------------------

    def train_model(
        self,
        datasets: Annotated[list[int | str], Field(min_length=1, description=(
            "Dataset ids (list_datasets shows them) or absolute paths of JSONL files on the machine "
            "honed runs on, under the workspace or [mcp] allowed_dirs; a file is validated and added first."))],
        track: TrackArg = None,
        priority: PriorityArg = "normal",
        overrides: Annotated[dict[str, Any] | None, Field(description=(
            'Settings for this job only, e.g. {"train": {"lr": 0.001, "epochs": 2}}.'))] = None,
    ) -> dict[str, Any]:
        """Queue a job that trains a LoRA adapter; answers at once with the job (its id
        is `id`). The daemon trains it, evaluates the candidate and deploys it if it
        passes its gates. Follow it with `get_job` or honed://jobs/{id}/events."""
        # Every path is judged before any file is read: one refused path queues nothing.
        items = [str(d) if str(d).isdigit() else str(confined_path(self.workspace, str(d))) for d in datasets]
        job, added = control.queue_job(self.workspace, self.store, items,
                                       track=track or self.workspace.settings.track, priority=priority,
                                       overrides=overrides or {}, source="mcp")
        return {**plain(job), "added": [result.describe() for result in added]}

    def log_experience(
        self,
        messages: Annotated[list[ChatMessage], Field(min_length=1, description="What the model was given.")],
        output: Annotated[str, Field(description="What it answered.")],
        track: TrackArg = None,
        adapter_id: Annotated[int | None, Field(description="The adapter that answered, if known "
                                                            "(default: the bare base).")] = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record an interaction the model served elsewhere; answers with the experience
        (its id is `id`, for `give_feedback` later). Experiences with feedback become
        training data."""
        experience = self.store.add_experience(
            track=track or self.workspace.settings.track, messages=[m.model_dump() for m in messages],
            output=output, adapter_id=adapter_id, source="logged", meta=metadata,
            max_chars=self.workspace.settings.ingest.max_record_chars)
        return plain(experience)

    def give_feedback(
        self,
        experience_id: int,
        score: Annotated[float | None, Field(ge=0, le=1, description="0 (bad) to 1 (good).")] = None,
        thumbs: Literal["up", "down"] | None = None,
        corrected_output: Annotated[str | None, Field(description="What the answer should have been.")] = None,
    ) -> dict[str, Any]:
        """Say what an answer was worth: a score, thumbs up or down, and/or the corrected
        output (give at least one). Answers with the experience as it is now."""
        return plain(self.store.add_feedback(experience_id, score=score, thumbs=thumbs,
                                             corrected_output=corrected_output,
                                             max_chars=self.workspace.settings.ingest.max_record_chars))

    def list_experiences(
        self,
        track: TrackArg = None,
        excluded: Annotated[bool | None, Field(description="true: only those excluded from training (with their "
                                                          "reason); false: only the others.")] = None,
        set_aside: Annotated[bool, Field(description="Only those a batch set aside (they cannot be a "
                                                     "training line).")] = False,
        untrained: Annotated[bool, Field(description="Only those no run trained on.")] = False,
        before_id: Annotated[int | None, Field(description="Page back: only ids below this one.")] = None,
        limit: Annotated[int, Field(ge=1, le=1000)] = 50,
    ) -> list[dict[str, Any]]:
        """Experiences, newest first, with their feedback, the run that trained on them and,
        for one kept out of training, `excluded_reason`."""
        return plain(self.store.list_experiences(track, untrained_only=untrained, limit=limit, before_id=before_id,
                                                 excluded=excluded, set_aside=set_aside))

    def exclude_experience(
        self,
        experience_id: int,
        reason: Annotated[str, Field(min_length=1, description="Why it must not be trained on; kept with it.")],
    ) -> dict[str, Any]:
        """Keep an experience out of every training batch from now on (a batch already
        assembled keeps it); it stays listed with the reason."""
        return plain(self.store.exclude_experience(experience_id, reason))

    def include_experience(self, experience_id: int) -> dict[str, Any]:
        """Offer an excluded or set-aside experience to training again."""
        return plain(self.store.include_experience(experience_id))

    def delete_experience(self, experience_id: int) -> dict[str, Any]:
        """Delete an experience with its feedback and the teacher's answers about it.
        Batches already assembled keep their record of it; an adapter trained on it keeps
        what it learned."""
        return deleted_experience(self.store.delete_experience(experience_id))

    def learn_status(self, track: TrackArg = None) -> dict[str, Any]:
        """Where a track's learning loop stands: experiences by judgement, corrections by
        people and the teacher, teacher calls and budget, the batch in the queue, the
        experiences excluded or set aside, and whether the trigger would fire now
        (`why_not` says why not)."""
        from honed.learning.trigger import learning_state

        name = track or self.workspace.settings.track
        return learning_state(self.workspace, self.store, name).summary()

    def learn_run_now(
        self,
        track: TrackArg = None,
        teacher: Annotated[bool, Field(description="Ask the teacher first (within its daily budget).")] = True,
    ) -> dict[str, Any]:
        """Assemble the experiences ready to train on (plus replay) into a dataset and queue
        its job now, whatever the trigger's threshold, cooldown and window say. Returns the
        batch, its job id and the dataset's make-up at once; training happens in the daemon."""
        from honed.learning.trigger import run_now

        done, report = run_now(self.workspace, self.store, track or self.workspace.settings.track, teacher=teacher)
        return {"batch": done.batch.id, "job": done.job_id, "dataset": done.dataset_id, "objective": done.objective,
                "counts": done.counts, "teacher": report.summary() if report else None}

    # --- tools that change what runs or what is live --------------------------------

    def control_job(
        self,
        command: CommandArg,
        job_id: Annotated[int | None, Field(description="Job id (default: the running job; for resume, "
                                                        "the one paused or skipped job).")] = None,
        wait_s: Annotated[float, Field(ge=0, le=600, description="How long to wait for the new state.")] = 30.0,
    ) -> dict[str, Any]:
        """Steer a job: pause (checkpoint and free the accelerator), resume (continue
        exactly where it paused), stop (end training, keep the adapter as it is), skip
        (set it aside, go on with the next) or cancel (drop it). Waits up to `wait_s`;
        `reached` says whether the job got there (else the command stays recorded)."""
        result = control.control_job(self.workspace, self.store, command, job_id, wait_s=wait_s)
        if not result.reached and result.command.state == "done":
            raise ToolError(result.message)  # the daemon settled it otherwise (the CLI exits 1, the API 409)
        return control_result(result)

    def deploy(
        self,
        adapter_id: int,
        force: Annotated[bool, Field(description="Deploy even if it did not pass its gates.")] = False,
        reason: str = "deployed over MCP",
    ) -> dict[str, Any]:
        """Make an adapter live on its track, atomically; deploy hooks run after the
        switch (`hooks_ok` says whether they all succeeded)."""
        return deploy_result(deployment.deploy(self.workspace, self.store, adapter_id, force=force, reason=reason))

    def approve(self, adapter_id: int) -> dict[str, Any]:
        """Approve an adapter that awaits approval: it is deployed."""
        return deploy_result(deployment.approve(self.workspace, self.store, adapter_id))

    def reject(self, adapter_id: int) -> dict[str, Any]:
        """Reject an adapter that awaits approval (it is kept, with its numbers)."""
        return _adapter(self.store.reject_adapter(adapter_id))

    def rollback(
        self,
        track: TrackArg = None,
        to: Annotated[int | None, Field(description="An adapter deployed before (default: the one "
                                                    "deployed before the current one).")] = None,
    ) -> dict[str, Any]:
        """Go back to the adapter deployed before the current one (again: further back)."""
        track = self.store.require_track(track or self.workspace.settings.track).name
        return deploy_result(deployment.rollback(self.workspace, self.store, track, to))

    # --- resources -----------------------------------------------------------------

    def status_resource(self) -> str:
        """What the status tool answers, as a resource."""
        return self._json(self._status())

    def job_events(self, job_id: int) -> str:
        """A job's event log, oldest first: queued, started, checkpoints, pauses, failed
        attempts, evaluation, verdict, deployment."""
        self.store.get_job(job_id)
        return self._json(self.store.job_events(job_id))

    def run_metrics(self, run_id: str, kind: str = "train") -> str:
        """A run's metric rows by step, the latest attempt's row for each step after
        resumes. ``kind``: train (loss, learning rate, grad norm, tokens/s; the default),
        eval, or layers (per-layer LoRA change)."""
        return self._json({"run": run_id, "kind": kind, "rows": self.store.get_metrics(run_id, kind)})


TOOLS = {
    # name: what it may do, for clients that ask before calling tools with effects
    **dict.fromkeys(("status", "list_jobs", "get_job", "list_datasets", "list_adapters", "list_experiences",
                     "learn_status"), ToolAnnotations(read_only_hint=True)),
    **dict.fromkeys(("train_model", "log_experience", "give_feedback", "learn_run_now", "exclude_experience",
                     "include_experience"), ToolAnnotations(read_only_hint=False, destructive_hint=False)),
    **dict.fromkeys(("control_job", "deploy", "approve", "reject", "rollback", "delete_experience"),
                    ToolAnnotations(read_only_hint=False, destructive_hint=True)),
}


def _answering_tool_errors(fn: Callable, paths: PathHider) -> Callable:
    """``fn`` with honed's errors raised as ToolError, whose message the client sees; its
    answer and messages name the workspace's files by workspace-relative names."""

    @functools.wraps(fn)
    def tool(*args, **kwargs):
        try:
            return paths.answer(fn(*args, **kwargs))
        except HONED_ERRORS as exc:
            raise ToolError(paths.text(str(exc))) from None

    return tool


def _answering_resource_errors(fn: Callable, paths: PathHider) -> Callable:
    """``fn`` with honed's errors raised as the SDK's resource errors (an unknown id is
    'not found'), whose message the client sees."""

    @functools.wraps(fn)
    def read(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NotFoundError as exc:
            raise ResourceNotFoundError(paths.text(str(exc))) from None
        except HONED_ERRORS as exc:
            raise ResourceError(paths.text(str(exc))) from None

    return read


def create_server(workspace: Workspace) -> MCPServer:
    """The MCP server of ``workspace``: its store is opened when the server starts and
    closed when it stops."""
    tools = WorkspaceTools(workspace)

    @asynccontextmanager
    async def lifespan(server: MCPServer):
        tools.store = workspace.open_store(busy_timeout_s=5.0)
        try:
            yield tools
        finally:
            tools.store.close()
            tools.store = None

    server = MCPServer("honed", title=f"honed ({workspace.root.name})", version=__version__,
                       instructions=INSTRUCTIONS, lifespan=lifespan, log_level="WARNING")
    for name, hints in TOOLS.items():
        server.add_tool(_answering_tool_errors(getattr(tools, name), tools.paths), annotations=hints)
    for uri, read in (("honed://status", tools.status_resource),
                      ("honed://jobs/{job_id}/events", tools.job_events),
                      ("honed://runs/{run_id}/metrics{?kind}", tools.run_metrics)):
        server.resource(uri, mime_type="application/json")(_answering_resource_errors(read, tools.paths))
    return server


def run_server(workspace: Workspace, *, http: bool = False, host: str = "127.0.0.1",
               port: int = DEFAULT_HTTP_PORT) -> None:
    """Serve ``workspace`` over stdio (the default) or streamable HTTP at
    ``http://HOST:PORT/mcp``. Over HTTP, any address but loopback needs the token of
    ``[server] token_env``, as ``honed serve`` does; ServerConfigError otherwise."""
    server = create_server(workspace)
    if not http:
        server.run("stdio")
        return
    import uvicorn

    from honed.server.security import RequestGuard, server_token

    token = server_token(workspace.settings.server, host)
    app = server.streamable_http_app(host=host)
    if token is not None:
        app = BearerTokenGate(app, token, workspace.settings.server.token_env)
    # The same Host and Origin rules as the HTTP API (server.allowed_hosts, server.allowed_origins),
    # ahead of the token: a page of another site, or a rebound DNS name, is refused whatever it carries.
    app = RequestGuard(app, settings=workspace.settings.server, host=host, reply=_guard_refusal)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)


def _guard_refusal(request, status: int, message: str):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


class BearerTokenGate:
    """ASGI middleware: an HTTP request without ``Authorization: Bearer TOKEN`` gets 401."""

    def __init__(self, app, token: str, token_env: str) -> None:
        self.app = app
        self.token = token.encode()
        self.token_env = token_env

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            header = dict(scope["headers"]).get(b"authorization", b"")
            given = header[7:].strip() if header[:7].lower() == b"bearer " else b""
            if not hmac.compare_digest(given, self.token):
                from starlette.responses import JSONResponse

                refusal = JSONResponse(
                    {"error": "missing or wrong token: send 'Authorization: Bearer TOKEN' with the token the "
                              f"server was started with (environment variable {self.token_env})"},
                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)
