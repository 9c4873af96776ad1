"""Deploying, approving and rolling back adapters, with the on-disk pointer and hooks.

The store is the truth: a switch is one transaction there (see
:mod:`honed.store.registry`). The pointer that servers read,
``deployments/<track>/current`` (a symlink to the adapter directory) and
``current.json`` beside it, is written right after, each by an atomic rename; if a crash
falls between the two, :func:`sync_pointer` (run by the daemon at start and before every
switch) makes the pointer agree with the store again. Hooks run last: a shell command,
vLLM's ``/v1/load_lora_adapter``, and the GGUF engines of :mod:`honed.registry.engines`
(llama.cpp, Ollama). A failing hook is reported, never silent, and does
not undo the switch.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from honed.atomic_files import fsync_dir, write_json_atomically
from honed.store import AdapterInfo, DeploymentInfo, JobStateError

log = logging.getLogger(__name__)

POINTER_DIR = "deployments"


class DeployError(Exception):
    """A deployment change that cannot be made; the message says why and what would."""


@dataclass
class DeployResult:
    """What a switch did: the history row, the adapter now live (None: bare base), the
    pointer written and what each hook said."""

    deployment: DeploymentInfo
    adapter: AdapterInfo | None
    pointer: Path
    hooks: list[dict] = field(default_factory=list)

    @property
    def hooks_ok(self) -> bool:
        return all(h["ok"] for h in self.hooks)


def _phase(name: str) -> None:
    """A named instant of a switch; the crash tests stop the process at each one."""


def pointer_dir(workspace, track: str) -> Path:
    return workspace.root / POINTER_DIR / track


def sync_pointer(workspace, store, track: str) -> Path:
    """Write the track's pointer from the store (idempotent); returns its directory."""
    folder = pointer_dir(workspace, track)
    folder.mkdir(parents=True, exist_ok=True)
    adapter = store.deployed_adapter(track)
    history = store.list_deployments(track, limit=1)
    document = {
        "track": track,
        "adapter_id": adapter.id if adapter else None,
        "name": adapter.name if adapter else None,
        "path": adapter.path if adapter else None,
        "base_version": adapter.base_version if adapter else store.require_track(track).base_version,
        "deployment_id": history[0].id if history else None,
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    link = folder / "current"
    if adapter is not None:
        if not (link.is_symlink() and os.readlink(link) == adapter.path):
            staging = folder / f".current.{os.getpid()}.tmp"
            staging.unlink(missing_ok=True)
            os.symlink(adapter.path, staging)
            _phase("link_staged")
            os.replace(staging, link)  # atomic: a reader sees the old target or the new
    elif link.is_symlink():
        link.unlink()
    fsync_dir(folder)
    _phase("link_written")
    current = folder / "current.json"
    try:
        same = json.loads(current.read_text()).get("deployment_id") == document["deployment_id"]
    except (OSError, ValueError):
        same = False
    if not same:
        write_json_atomically(current, document)
    return folder


def _switch(workspace, store, track: str, make) -> DeployResult:
    sync_pointer(workspace, store, track)  # repair what an earlier crash may have left
    try:
        deployment = make()
    except JobStateError as exc:
        raise DeployError(str(exc)) from None
    _phase("store_switched")
    folder = sync_pointer(workspace, store, track)
    _phase("pointer_written")
    adapter = store.get_adapter(deployment.adapter_id) if deployment.adapter_id is not None else None
    if adapter is not None and adapter.run_id:
        _mark_learned(workspace, store, adapter)
    hooks = run_hooks(workspace.settings.deploy, track, deployment, adapter, workspace=workspace, store=store)
    if hooks:
        store.record_hooks(deployment.id, hooks)
        for hook in hooks:
            (log.info if hook["ok"] else log.error)("deploy hook %s: %s", hook["hook"], hook["detail"])
    return DeployResult(deployment, adapter, folder, hooks)


def _mark_learned(workspace, store, adapter: AdapterInfo) -> None:
    """A deployed adapter's records are now what the track knows (idempotent): later
    plans skip them and replay draws from them. A rejected candidate's never are."""
    from honed.training.runs import mark_learned

    run_dir = workspace.runs_dir / adapter.run_id
    if (run_dir / "train.jsonl").is_file():
        mark_learned(store, adapter.run_id, run_dir, adapter.track, adapter.base_version)


def deploy(workspace, store, adapter_id: int, *, force: bool = False, reason: str = "deployed by hand") -> DeployResult:
    """Make ``adapter_id`` live on its track. Without ``force`` it must have passed its
    gates (and not be waiting for an approval)."""
    adapter = store.get_adapter(adapter_id)
    _check_weights(workspace, adapter)
    if not force:
        verdict = adapter.verdict or {}
        if adapter.state == "awaiting_approval":
            raise DeployError(f"adapter {adapter_id} awaits approval: 'honed approve {adapter_id}' "
                              "(or --force)")
        if adapter.state == "rejected" and not verdict.get("failed"):
            raise DeployError(f"adapter {adapter_id} was rejected (by a person, or when it was evaluated); "
                              "--force deploys it anyway")
        if not verdict.get("passed"):
            why = "; ".join(verdict.get("failed", [])) or "it has no gate verdict"
            raise DeployError(f"adapter {adapter_id} did not pass its gates ({why}); --force deploys it anyway")
    allowed = ("candidate", "awaiting_approval", "rejected", "retired") if force else ("candidate",)
    return _switch(workspace, store, adapter.track, lambda: store.switch_deployment(
        adapter.track, adapter_id, action="deploy", reason=reason + (" (forced)" if force else ""),
        allowed=allowed))


def _check_weights(workspace, adapter: AdapterInfo) -> None:
    """Refuse an adapter whose weights are gone (``honed gc`` removed them, or a person)."""
    if not Path(adapter.path).is_dir():
        raise DeployError(f"adapter {adapter.id}'s weights are gone from {adapter.path} (removed by 'honed gc' "
                          f"if {workspace.logs_dir / 'gc.jsonl'} lists them); its numbers are still in the store. "
                          "storage.keep_deployments says how many deployments keep theirs")


def approve(workspace, store, adapter_id: int) -> DeployResult:
    """A person's yes to an adapter awaiting approval: it is deployed."""
    adapter = store.get_adapter(adapter_id)
    _check_weights(workspace, adapter)
    if adapter.state != "awaiting_approval":
        raise DeployError(f"adapter {adapter_id} is {adapter.state}; only one awaiting approval can be approved")
    return _switch(workspace, store, adapter.track, lambda: store.switch_deployment(
        adapter.track, adapter_id, action="approve", reason="approved", allowed=("awaiting_approval",)))


def rollback(workspace, store, track: str, to: int | None = None) -> DeployResult:
    """Go back to the adapter deployed before (walking the history back), or to ``to``."""
    if to is not None:
        _check_weights(workspace, store.get_adapter(to))
    return _switch(workspace, store, track, lambda: store.rollback(
        track, to, reason="rolled back" + (f" to adapter {to}" if to is not None else "")))


def run_hooks(settings, track: str, deployment: DeploymentInfo, adapter: AdapterInfo | None, *,
              workspace=None, store=None) -> list[dict]:
    """Run the configured hooks for a switch; each result says ok or what went wrong. The
    GGUF engines (llama.cpp, Ollama) export the live version, so they need the workspace
    and store."""
    results = []
    if settings.command:
        env = {**os.environ, "HONED_TRACK": track, "HONED_ACTION": deployment.action,
               "HONED_ADAPTER_ID": str(adapter.id) if adapter else "",
               "HONED_ADAPTER_NAME": adapter.name if adapter else "",
               "HONED_ADAPTER_PATH": adapter.path if adapter else ""}
        try:
            done = subprocess.run(settings.command, shell=True, env=env, capture_output=True, text=True,
                                  timeout=settings.hook_timeout_s)
            said = (done.stdout + done.stderr).strip()[-500:]
            results.append({"hook": "command", "ok": done.returncode == 0,
                            "detail": f"exit {done.returncode}" + (f": {said}" if said else "")})
        except subprocess.TimeoutExpired:
            results.append({"hook": "command", "ok": False,
                            "detail": f"timed out after {settings.hook_timeout_s:g}s (deploy.hook_timeout_s)"})
    if settings.vllm_url:
        results.append(_load_into_vllm(settings, adapter))
    if (settings.llama_cpp_url or settings.ollama_url) and workspace is not None:
        from honed.registry.engines import deploy_to_llama_cpp, deploy_to_ollama

        if settings.llama_cpp_url:
            results.append(deploy_to_llama_cpp(workspace, store, settings, track, adapter))
        if settings.ollama_url:
            results.append(deploy_to_ollama(workspace, store, settings, track, adapter))
    return results


def _load_into_vllm(settings, adapter: AdapterInfo | None) -> dict:
    if adapter is None:
        return {"hook": "vllm", "ok": True, "detail": "bare base deployed: nothing to load"}
    url = settings.vllm_url.rstrip("/") + "/v1/load_lora_adapter"
    body = json.dumps({"lora_name": adapter.name, "lora_path": adapter.path}).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    if settings.vllm_api_key_env and os.environ.get(settings.vllm_api_key_env):
        request.add_header("Authorization", f"Bearer {os.environ[settings.vllm_api_key_env]}")
    try:
        with urllib.request.urlopen(request, timeout=settings.hook_timeout_s) as response:
            return {"hook": "vllm", "ok": True, "detail": f"{url}: {response.status}, loaded as {adapter.name}"}
    except urllib.error.HTTPError as exc:
        said = exc.read().decode("utf-8", "replace")[:300]
        return {"hook": "vllm", "ok": False, "detail": f"{url}: HTTP {exc.code} {said}"}
    except (urllib.error.URLError, OSError) as exc:
        return {"hook": "vllm", "ok": False, "detail": f"{url}: {getattr(exc, 'reason', exc)}"}
