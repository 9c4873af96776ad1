"""Where settings come from, in order (later wins): the defaults, ``honed.toml``,
``HONED_*`` environment variables, then command-line ``--set`` flags. Each layer is
validated as it lands, so an error names the layer the bad value came from."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from honed.config.models import Settings, SettingsError, describe_validation_error

CONFIG_FILE = "honed.toml"
ENV_PREFIX = "HONED_"


def _set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise SettingsError(f"'{dotted}': '{part}' is a value, not a section")
    target[parts[-1]] = value


def _parse_scalar(text: str) -> Any:
    """Parse an env/flag value as a TOML value where it is one, else keep the string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Settings from HONED_* variables: HONED_TRAIN__LR=1e-3 sets train.lr."""
    variables = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    known = set(Settings.model_fields)
    for name, text in variables.items():
        if not name.startswith(ENV_PREFIX):
            continue
        dotted = name[len(ENV_PREFIX):].lower().replace("__", ".")
        # HONED_WORKSPACE, HONED_CACHE, ... are not settings of honed.toml.
        if dotted.split(".")[0] not in known:
            continue
        _set_dotted(out, dotted, _parse_scalar(text))
    return out


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """Turn ``["train.lr=1e-3", "lora.r=8"]`` (the CLI's --set) into a nested dict."""
    out: dict[str, Any] = {}
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=1e-3")
        _set_dotted(out, key.strip(), _parse_scalar(text.strip()))
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(workspace: Path | None, overrides: dict[str, Any] | None = None) -> Settings:
    """Read honed.toml of ``workspace`` (if any), then HONED_* env, then ``overrides``."""
    data: dict[str, Any] = {}
    origin = "defaults"
    if workspace is not None and (workspace / CONFIG_FILE).exists():
        path = workspace / CONFIG_FILE
        origin = str(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: not valid TOML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise SettingsError(f"{path}: not UTF-8 text (byte {exc.start}): save it as UTF-8") from exc
        except OSError as exc:
            raise SettingsError(f"{path}: cannot be read: {exc.strerror}") from exc
    layers = [(origin, data), ("environment (HONED_*)", env_overrides())]
    if overrides:
        layers.append(("command line", overrides))
    merged: dict[str, Any] = {}
    for name, layer in layers:
        merged = _merge(merged, layer)
        try:
            # Validate each layer as it lands so the error names where the bad value came from.
            Settings.model_validate(merged)
        except ValidationError as exc:
            raise SettingsError(describe_validation_error(exc, name)) from None
    return Settings.model_validate(merged)
