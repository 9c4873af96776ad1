"""Store views as JSON-ready data, shared by ``--json`` on the CLI, the HTTP API and the
MCP tools, so a job or an adapter looks the same wherever a program reads it."""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel


def plain(value: Any) -> Any:
    """``value`` with dataclasses and models turned into dicts, datetimes into ISO 8601
    strings, enums into their values and non-finite floats into the strings "nan", "inf"
    and "-inf" (JSON has no NaN)."""
    if isinstance(value, BaseModel):
        return {name: plain(field) for name, field in value}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds")
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def deploy_result(result) -> dict:
    """What a deploy, approve or rollback did (a registry DeployResult)."""
    d = result.deployment
    return {"track": d.track, "action": d.action, "adapter": result.adapter.id if result.adapter else None,
            "name": result.adapter.name if result.adapter else None, "previous": d.previous_adapter_id,
            "deployment": d.id, "pointer": str(result.pointer), "hooks": result.hooks, "hooks_ok": result.hooks_ok}


def control_result(result) -> dict:
    """The answer to a control command (a daemon.control ControlResult)."""
    return {"job": plain(result.job), "command": result.command.command, "reached": result.reached,
            "command_state": result.command.state, "taken_step": result.command.taken_step,
            "message": result.message}


def deleted_experience(info) -> dict:
    """The answer to deleting an experience (the ExperienceInfo it was): its id, and the
    run that had trained on it and the batch that held it, whose records are kept."""
    return {"deleted": info.id, "track": info.track, "trained_run_id": info.trained_run_id,
            "batch_id": info.batch_id}
