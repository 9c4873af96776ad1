"""``honed serve-llama``: llama-cpp-python's OpenAI-compatible server, serving every
track's live version, restarted whenever a deployment changes it.

Why a supervisor: llama-cpp-python's server (0.3.36) reads its models from
``--config_file`` once, at start, and has no route that loads a model or a LoRA adapter
later (its ``lora_path`` is a load-time setting too). Restarting it is the only way it
serves a new version; honed owns that restart so a deploy can wait for it. The deploy
hook (:func:`honed.registry.engines.deploy_to_llama_cpp`) rewrites the config file
atomically; this loop sees the file change, stops the server (SIGTERM, then SIGKILL)
and starts it again on the new file. A server that dies by itself is started again
after a pause.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

RESTART_PAUSE_S = 2.0  # after a server that died by itself, before starting it again
POLL_S = 0.25


class LlamaServerError(Exception):
    """The llama.cpp server cannot be run; the message says why and what to do."""


def server_address(workspace: Any) -> tuple[str, int]:
    """Host and port from ``deploy.llama_cpp_url``."""
    url = workspace.settings.deploy.llama_cpp_url
    if not url:
        raise LlamaServerError("deploy.llama_cpp_url is not set: set it (e.g. http://127.0.0.1:8080) so deploys "
                               "know where this server answers")
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)


def check_llama_cpp() -> None:
    """LlamaServerError unless llama-cpp-python's server can be imported."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        raise LlamaServerError("llama-cpp-python is not installed: pip install -c constraints.txt '.[llama]' "
                               "(it compiles llama.cpp: about 7 min on two cores)")


def prepare_config(workspace: Any, store: Any) -> Path:
    """Give every track its entry (its live version, exported once) and write the config file."""
    from honed.registry.engines import llama_config_path, set_llama_entry

    for track in store.list_tracks():
        set_llama_entry(workspace, store, track.name, store.deployed_adapter(track.name))
    return llama_config_path(workspace)


def _start(config: Path, log_file: Path) -> subprocess.Popen[bytes]:
    with log_file.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--config_file", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(child: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(grace_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def supervise(config: Path, log_file: Path, stop: threading.Event) -> None:
    """Run the server on ``config`` until ``stop`` is set; restart it when the file changes."""
    child = None
    seen: float | None = None
    try:
        while not stop.is_set():
            mtime = config.stat().st_mtime_ns if config.exists() else None
            if child is not None and mtime != seen:
                log.info("%s changed: restarting the llama.cpp server", config)
                _stop(child)
                child = None
            if child is not None and child.poll() is not None:
                log.error("the llama.cpp server exited with %s (log: %s); starting it again", child.returncode,
                          log_file)
                child = None
                stop.wait(RESTART_PAUSE_S)
            if child is None and mtime is not None:
                seen = mtime
                child = _start(config, log_file)
                log.info("llama.cpp server started (pid %d) on %s", child.pid, config)
            stop.wait(POLL_S)
    finally:
        if child is not None:
            _stop(child)


def serve_llama(workspace: Any, stop: threading.Event | None = None) -> None:
    """``honed serve-llama``: write the config from the store (exporting what is live and
    not exported yet), then supervise the server until SIGTERM or SIGINT (or ``stop``)."""
    check_llama_cpp()
    server_address(workspace)
    store = workspace.open_store()
    try:
        config = prepare_config(workspace, store)
    finally:
        store.close()
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    log_file = Path(workspace.root) / "logs" / "llama_cpp_server.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log.info("serving %s on the llama.cpp server (pid %d supervises)", config, os.getpid())
    supervise(config, log_file, stop)
