"""One seeded workspace per test module and store (SQLite, and PostgreSQL in a schema of
its own that is dropped afterwards), the app on it in-process, and the check every HTTP
case goes through.

The seed gives the hostile cases something real to aim at: dataset 1, job 1 (cancelled:
the wrong state for most commands), job 2 (queued), adapter 1 (a candidate that passed
its gates, not awaiting approval), adapter 2 (rejected), run ``run-a`` with metrics, experience 1.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from honed.config import update_config_file
from honed.workspace import Workspace, init_workspace, open_workspace
from tests.conftest import PG_URL
from tests.hostile.cases import NO_BODY, HttpCase, assert_store, error_message, store_fingerprint

# The PostgreSQL half runs in the slow tier (CI runs it; `pytest -m slow tests/hostile`), so
# the default run stays under its time budget; the SQLite half runs by default.
STORES = ["sqlite", pytest.param("postgresql", marks=[pytest.mark.postgres, pytest.mark.slow])]
# The address the tests talk to: an allowed Host and no Origin, as a local client sends.
BASE_URL = "http://127.0.0.1:8321"


@dataclass
class Seeded:
    """A workspace with the seed's ids, and an engine that reads its store directly."""

    ws: Workspace
    engine: sa.Engine
    dataset: int
    cancelled_job: int
    queued_job: int
    adapter: int
    rejected: int
    experience: int
    tables: sa.MetaData = field(default_factory=sa.MetaData)

    def fingerprint(self) -> dict[str, str]:
        """The store's rows as digests (see :func:`store_fingerprint`)."""
        if not self.tables.tables:
            self.tables.reflect(self.engine)
        return store_fingerprint(self.engine, self.tables)


@pytest.fixture(scope="module")
def module_store_url(request) -> Iterator[str]:
    """"" (SQLite in the workspace) or a PostgreSQL URL on a fresh schema, for one module."""
    if request.param == "sqlite":
        yield ""
        return
    pg_admin = request.getfixturevalue("pg_admin")  # skips (or fails in CI) without a server
    schema = f"honed_hostile_{secrets.token_hex(6)}"
    with pg_admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield sa.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"}) \
            .render_as_string(hide_password=False)
    finally:
        with pg_admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))


def pytest_generate_tests(metafunc):
    """Every test that uses the seeded workspace runs once per store, module-scoped."""
    if "module_store_url" in metafunc.fixturenames:
        metafunc.parametrize("module_store_url", STORES, indirect=True, scope="module")


@pytest.fixture(scope="module")
def seeded(module_store_url, tmp_path_factory, tiny_random_base) -> Iterator[Seeded]:
    """The seeded workspace of this module on this store."""
    from honed.daemon.control import queue_job, remove_job
    from honed.data.datasets import add_dataset_file
    from tests.daemon.conftest import synth

    root = tmp_path_factory.mktemp("hostile") / "ws"
    init_workspace(root, base=str(tiny_random_base), store_url=module_store_url)
    update_config_file(root, {"ingest": {"mode": "strict", "max_record_chars": 4096}})
    ws = open_workspace(root)
    data = synth(tmp_path_factory.mktemp("hostile-data") / "seed.jsonl", 8)
    with ws.open_store() as store:
        dataset = add_dataset_file(ws, store, data, track="main", mode="strict").dataset.id
        cancelled, _ = queue_job(ws, store, [str(dataset)], track="main")
        remove_job(store, cancelled.id)
        queued, _ = queue_job(ws, store, [str(dataset)], track="main", priority="low")
        (ws.adapters_dir / "a1").mkdir(parents=True)
        adapter = store.add_adapter(track="main", run_id=None, job_id=None, base_version=0,
                                    path=str(ws.adapters_dir / "a1"))
        verdict = {"passed": True, "failed": [], "rules": [], "require_approval": False, "baseline": "base"}
        store.record_evaluation(adapter.id, {"candidate": {}, "baseline": {}}, verdict, "candidate")
        (ws.adapters_dir / "a2").mkdir(parents=True)
        rejected = store.add_adapter(track="main", run_id=None, job_id=None, base_version=0,
                                     path=str(ws.adapters_dir / "a2"))
        store.reject_adapter(rejected.id)
        store.create_run(run_id="run-a", track="main", base_version=0, config={}, dataset_ids=[dataset])
        attempt = store.start_attempt("run-a")
        store.append_metrics("run-a", [{"step": s, "loss": 1.0 / s} for s in range(1, 6)], attempt)
        experience = store.add_experience(track="main", messages=[{"role": "user", "content": "ping"}],
                                          output="pong", source="logged")
    engine = sa.create_engine(ws.store_url)
    try:
        yield Seeded(ws, engine, dataset, cancelled.id, queued.id, adapter.id, rejected.id, experience.id)
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def api(seeded) -> Iterator[TestClient]:
    """The app of the seeded workspace, in-process (its lifespan runs once per module)."""
    from honed.server import create_app

    with TestClient(create_app(seeded.ws), base_url=BASE_URL, raise_server_exceptions=False) as client:
        yield client


def fill(text: str, seeded: Seeded) -> str:
    """A path with the seed's ids in place of ``{dataset}``, ``{job}``, ..."""
    return text.format(dataset=seeded.dataset, job=seeded.cancelled_job, queued=seeded.queued_job,
                       adapter=seeded.adapter, rejected=seeded.rejected, experience=seeded.experience)


def run_http_case(api: TestClient, seeded: Seeded, case: HttpCase):
    """Send ``case`` and check everything a case promises; returns the answer."""
    path = fill(case.path, seeded)
    before = seeded.fingerprint()
    kwargs: dict = {"params": case.params, "headers": case.headers}
    if case.json is not NO_BODY:
        kwargs["json"] = case.json
    if case.content is not None:
        kwargs["content"] = case.content.encode("utf-8", "surrogatepass") if isinstance(case.content, str) \
            else case.content
    answer = api.request(case.method, path, **kwargs)
    allowed = case.status if isinstance(case.status, tuple) else (case.status,)
    assert answer.status_code in allowed, f"{case.id}: {answer.status_code} {answer.text[:500]}"
    if answer.status_code >= 400:
        assert case.message, f"{case.id}: a refusal must say which message it expects"
        message = error_message(answer, path)
        assert case.message in message, f"{case.id}: {message!r} lacks {case.message!r}"
    assert str(seeded.ws.root) not in answer.text, f"{case.id}: the answer names a server path"
    assert_store(before, seeded.fingerprint(), case.stores, case.id)
    health = api.get("/api/health")
    assert health.status_code == 200 and health.json()["ok"], f"after {case.id}: {health.text}"
    return answer
