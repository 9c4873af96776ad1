"""``honed.toml`` as a file people read and edit: ``honed init`` writes it with every key
documented, and changes made by honed keep the user's comments and layout."""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from honed.config.layering import CONFIG_FILE
from honed.config.models import Settings, SettingsError, describe_validation_error


def _apply_changes(table: MutableMapping[str, Any], changes: dict[str, Any]) -> None:
    """Set ``changes`` into a tomlkit table in place: sections merge key by key, so the
    lines and comments around what changed stay as the user wrote them."""
    import tomlkit

    for key, value in changes.items():
        current = table.get(key)
        if isinstance(value, dict) and isinstance(current, MutableMapping):
            _apply_changes(current, value)
        elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
            # Lists of tables (gate rules, eval sets) stay one inline array, as honed init writes them.
            array = tomlkit.array()
            for entry in value:
                if isinstance(entry, dict):
                    inline = tomlkit.inline_table()
                    inline.update(entry)
                    entry = inline
                array.append(entry)
            table[key] = array
        else:
            table[key] = value


def update_config_file(workspace: Path, changes: dict[str, Any]) -> None:
    """Merge ``changes`` (e.g. ``{"train": {"lr": 1e-3}}``) into the workspace's
    honed.toml, keeping its comments, order and formatting. The result is validated
    first (SettingsError names what is wrong, and the file is left alone), then written
    atomically."""
    import tomlkit

    from honed.atomic_files import write_bytes_atomically

    path = Path(workspace) / CONFIG_FILE
    document = tomlkit.parse(path.read_text(encoding="utf-8"))
    _apply_changes(document, changes)
    try:
        Settings.model_validate(document.unwrap())
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc, str(path))) from None
    write_bytes_atomically(path, tomlkit.dumps(document).encode())


def _toml_value(value: Any) -> str:
    import tomli_w

    if isinstance(value, list):  # lists of models (gate rules, eval sets): inline tables
        value = [v.model_dump(exclude_none=True) if isinstance(v, BaseModel) else v for v in value]
        if value and isinstance(value[0], dict):
            inline = ", ".join("{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
                               for v in value)
            return f"[{inline}]"
    if isinstance(value, dict):  # a map in a section (e.g. server.upstream_models): an inline table
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in value.items()) + " }" if value \
            else "{}"
    return tomli_w.dumps({"v": value}).strip()[len("v = "):]


def render_commented_toml(settings: Settings) -> str:
    """The honed.toml that ``honed init`` writes: every key with its description and unit."""
    out = [
        "# honed workspace settings. Every key is shown with its default.",
        "# Environment variables override this file: HONED_TRAIN__LR=1e-3 sets [train] lr.",
        "# Flags override both (honed train --set train.lr=1e-3).",
        "",
    ]
    sections = []
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        if isinstance(value, BaseModel):
            sections.append((name, value))
            continue
        if isinstance(value, dict) and not value:  # tables of tables: shown as a commented example
            out.append(f"# {field.description}")
            out.append("# [tracks.support-bot.gates]\n# require_approval = true")
            out.append("")
            continue
        out.append(f"# {field.description}")
        out.append(f"{name} = {_toml_value(value)}")
        out.append("")
    while sections:
        name, section = sections.pop(0)
        out.append(f"[{name}]")
        doc = " ".join(line.strip() for line in (type(section).__doc__ or "").strip().splitlines())
        out.append(f"# {doc}")
        nested = []
        for key, field in type(section).model_fields.items():
            value = getattr(section, key)
            if isinstance(value, BaseModel):  # a sub-table, e.g. [learn.teacher], after its parent's keys
                nested.append((f"{name}.{key}", value))
                continue
            out.append(f"# {field.description}")
            out.append(f"{key} = {_toml_value(value)}")
        out.append("")
        sections[:0] = nested
    return "\n".join(out)
