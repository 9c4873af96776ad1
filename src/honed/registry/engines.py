"""Deploy hooks for engines that serve GGUF files: llama.cpp and Ollama.

Both get the track's live version as one merged f16 GGUF, exported by
:func:`honed.registry.export.export` into the workspace's default export directory
(``exports/main-a7-gguf-f16``) the first time it goes live and reused afterwards, so a
rollback to a version served before costs no export. Each version has its own engine
name (the adapter's, ``main-a7``; ``main-base-v0`` for a bare base): an engine never
reloads a file under a name it already serves (vLLM #42125's stale caches).

- **llama.cpp**: llama-cpp-python's server (0.3.36) has no route that loads a model or a
  LoRA adapter at run time: its models, and any ``lora_path``, are read from
  ``--config_file`` when it starts. So honed writes that file
  (``deployments/llama_cpp.json``: every track's live model, one entry per track) and
  ``honed serve-llama`` (:mod:`honed.registry.llama_server`) runs the server and restarts
  it when the file changes. The hook succeeds only once the server at
  ``deploy.llama_cpp_url`` lists the new name in ``/v1/models``.
- **Ollama**: the file is uploaded as a blob (``HEAD``/``POST /api/blobs/sha256:D``,
  skipped when Ollama has it) and ``POST /api/create`` makes the model with the
  Modelfile's template, system prompt and stop strings.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from honed.atomic_files import write_json_atomically
from honed.registry.export import MANIFEST, ExportError, default_out, export, resolve_target
from honed.registry.modelfile import CHATML_GO_TEMPLATE

LLAMA_CONFIG = "llama_cpp.json"  # in deployments/: the config file the llama.cpp server reads
LLAMA_ENTRY = "llama_cpp_model.json"  # in deployments/<track>/: that track's entry in it


@dataclass
class LiveGGUF:
    """The f16 GGUF of a track's live version, its engine name and its export manifest."""

    path: Path
    name: str
    manifest: dict[str, Any]


def live_gguf(workspace: Any, store: Any, track: str, adapter: Any) -> LiveGGUF:
    """Export (once) the version now live on ``track`` as a merged f16 GGUF."""
    if adapter is not None:
        target, name = f"a{adapter.id}", adapter.name
    else:
        version = store.require_track(track).base_version
        target, name = f"base:{version}", f"{track}-base-v{version}"
    out = default_out(workspace, resolve_target(workspace, store, target), "gguf", "f16")
    if not (out / MANIFEST).is_file():  # an export is renamed into place whole: a manifest means complete
        try:
            export(workspace, store, target, "gguf", "f16", out)
        except ExportError:
            if not (out / MANIFEST).is_file():  # not another process's export of the same version meanwhile
                raise
    manifest = json.loads((out / MANIFEST).read_text())
    return LiveGGUF(out / manifest["gguf"], name, manifest)


def _result(hook: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"hook": hook, "ok": ok, "detail": detail}


def _http_error(url: str, exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"{url}: HTTP {exc.code} {exc.read().decode('utf-8', 'replace')[:300]}"
    return f"{url}: {getattr(exc, 'reason', exc)}"


# --- llama.cpp -------------------------------------------------------------------------

def llama_config_path(workspace: Any) -> Path:
    return Path(workspace.root) / "deployments" / LLAMA_CONFIG


def write_llama_config(workspace: Any, host: str, port: int) -> Path:
    """Assemble the llama.cpp server's config file from every track's entry (atomically:
    the supervisor never reads half a file)."""
    entries = []
    for entry_file in sorted((Path(workspace.root) / "deployments").glob(f"*/{LLAMA_ENTRY}")):
        entries.append(json.loads(entry_file.read_text()))
    path = llama_config_path(workspace)
    write_json_atomically(path, {"host": host, "port": port, "models": entries})
    return path


def llama_model_entry(gguf: LiveGGUF) -> dict[str, Any]:
    """One model of llama-cpp-python's config file. No ``chat_format``: the server then
    formats chats with the Jinja template in the GGUF's metadata, the base's own."""
    return {"model": str(gguf.path), "model_alias": gguf.name, "n_ctx": 2048, "verbose": False}


def set_llama_entry(workspace: Any, store: Any, track: str, adapter: Any) -> LiveGGUF:
    """Export the track's live version and make it the track's entry in the config file."""
    from urllib.parse import urlsplit

    gguf = live_gguf(workspace, store, track, adapter)
    write_json_atomically(Path(workspace.root) / "deployments" / track / LLAMA_ENTRY, llama_model_entry(gguf))
    url = urlsplit(workspace.settings.deploy.llama_cpp_url or "http://127.0.0.1:8080")
    write_llama_config(workspace, url.hostname or "127.0.0.1", url.port or 8080)
    return gguf


def served_models(url: str, timeout: float) -> list[str]:
    """The model names a llama.cpp (or any OpenAI-compatible) server lists."""
    with urllib.request.urlopen(url.rstrip("/") + "/v1/models", timeout=timeout) as response:
        return [m["id"] for m in json.loads(response.read())["data"]]


def deploy_to_llama_cpp(workspace: Any, store: Any, settings: Any, track: str, adapter: Any) -> dict[str, Any]:
    """The llama.cpp hook: the new version in the config file, then wait (up to
    ``hook_timeout_s``) until the restarted server lists it."""
    url = settings.llama_cpp_url
    try:
        gguf = set_llama_entry(workspace, store, track, adapter)
    except (ExportError, OSError) as exc:
        return _result("llama_cpp", False, f"exporting the GGUF failed: {exc}")
    deadline = time.monotonic() + settings.hook_timeout_s
    last = ""
    while True:
        try:
            listed = served_models(url, timeout=min(5.0, settings.hook_timeout_s))
            if gguf.name in listed:
                return _result("llama_cpp", True, f"{url} serves {gguf.name} ({gguf.path.name})")
            last = f"{url} lists {', '.join(listed) or 'nothing'}, not yet {gguf.name}"
        except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
            last = _http_error(url, exc) + " (is 'honed serve-llama' running?)"
        if time.monotonic() >= deadline:
            return _result("llama_cpp", False, f"{last}; gave up after {settings.hook_timeout_s:g}s "
                           "(deploy.hook_timeout_s); the config file names it, so the next server start serves it")
        time.sleep(0.25)


# --- Ollama ----------------------------------------------------------------------------

def ollama_create_body(gguf: LiveGGUF, digest: str) -> dict[str, Any]:
    """``POST /api/create``'s body: the GGUF by digest plus what the Modelfile says."""
    body: dict[str, Any] = {"model": gguf.name, "files": {gguf.path.name: digest}, "stream": False}
    chat = gguf.manifest.get("modelfile") or {}
    if chat.get("template") == "chatml":
        body["template"] = CHATML_GO_TEMPLATE
    if chat.get("system"):
        body["system"] = chat["system"]
    if chat.get("stop"):
        body["parameters"] = {"stop": chat["stop"]}
    return body


def _ollama_blob(url: str, gguf: LiveGGUF, digest: str, timeout: float) -> str:
    """Upload the GGUF unless Ollama has it; says which."""
    blob_url = f"{url}/api/blobs/{digest}"
    try:
        with urllib.request.urlopen(urllib.request.Request(blob_url, method="HEAD"), timeout=timeout):
            return "blob already there"
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise
    size = gguf.path.stat().st_size
    with gguf.path.open("rb") as body:
        request = urllib.request.Request(blob_url, data=body, method="POST",
                                         headers={"Content-Length": str(size),
                                                  "Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(request, timeout=timeout):
            return f"blob uploaded ({size / 1e6:.1f} MB)"


def deploy_to_ollama(workspace: Any, store: Any, settings: Any, track: str, adapter: Any) -> dict[str, Any]:
    """The Ollama hook: blob, then ``/api/create`` under the version's own name."""
    url = settings.ollama_url
    try:
        gguf = live_gguf(workspace, store, track, adapter)
    except (ExportError, OSError) as exc:
        return _result("ollama", False, f"exporting the GGUF failed: {exc}")
    digest = "sha256:" + gguf.manifest["files"][gguf.path.name]["sha256"]
    step = f"{url}/api/blobs/{digest}"
    try:
        uploaded = _ollama_blob(url, gguf, digest, settings.hook_timeout_s)
        step = f"{url}/api/create"
        request = urllib.request.Request(step, data=json.dumps(ollama_create_body(gguf, digest)).encode(),
                                         method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=settings.hook_timeout_s) as response:
            said = json.loads(response.read() or b"{}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return _result("ollama", False, _http_error(step, exc))
    if said.get("error") or said.get("status", "success") != "success":
        return _result("ollama", False, f"{step}: {said.get('error') or said.get('status')}")
    return _result("ollama", True, f"{url}: created {gguf.name} ({uploaded})")
