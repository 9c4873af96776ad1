"""Fixtures shared by the test tiers: a tiny random base, workspaces on it, the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the tests may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


@pytest.fixture(scope="session")
def tiny_random_base(tmp_path_factory) -> Path:
    """The tiny model with random weights: builds in about a second, trains fast."""
    from honed.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("bases") / "tiny-random", pretrain=False)


@pytest.fixture
def make_workspace(tmp_path):
    """Make a workspace on a local base directory (default: the random tiny base)."""
    from honed.workspace import init_workspace

    def make(base: Path, name: str = "ws", store_url: str = ""):
        return init_workspace(tmp_path / name, base=str(base), store_url=store_url)

    return make
