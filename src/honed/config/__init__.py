"""Typed settings: one pydantic model per concern, read from ``honed.toml``, then
``HONED_*`` environment variables, then command-line flags (later wins).

Every field carries its description and unit; the commented ``honed.toml`` that
``honed init`` writes is generated from these models, so the docs cannot drift from
the code. A wrong value raises :class:`SettingsError` naming the key, the value and
what is allowed.

Three modules, one idea each: :mod:`~honed.config.models` declares the settings,
:mod:`~honed.config.layering` stacks their sources, :mod:`~honed.config.toml_file`
writes and edits ``honed.toml``. Callers import from ``honed.config``.
"""

from honed.config.layering import CONFIG_FILE, ENV_PREFIX, env_overrides, load_settings, parse_assignments
from honed.config.models import (
    DaemonSettings,
    DeploySettings,
    EvalSetSettings,
    EvalSettings,
    GateRule,
    GateSettings,
    IngestSettings,
    LearnSettings,
    LoraSettings,
    McpSettings,
    ReportSettings,
    ServerSettings,
    Settings,
    SettingsError,
    StoreSettings,
    TeacherSettings,
    TelemetrySettings,
    TrackSettings,
    TrainSettings,
)
from honed.config.toml_file import render_commented_toml, update_config_file

__all__ = [
    "CONFIG_FILE", "ENV_PREFIX", "DaemonSettings", "DeploySettings", "EvalSetSettings", "EvalSettings",
    "GateRule", "GateSettings", "IngestSettings", "LearnSettings", "LoraSettings", "McpSettings", "ReportSettings",
    "ServerSettings", "Settings", "SettingsError", "StoreSettings", "TeacherSettings", "TelemetrySettings",
    "TrackSettings", "TrainSettings", "env_overrides", "load_settings", "parse_assignments", "render_commented_toml",
    "update_config_file",
]
