"""Hostile command lines for ``honed``: an expected failure is exit status 1 with one
``error:`` line naming what is wrong (2 and the usage text for a usage error), never a
traceback; nothing is stored; the workspace still answers ``honed status`` afterwards.
Commands on a workspace run on SQLite and PostgreSQL.

The commands run in-process through :func:`honed.cli.main`, the ``honed`` entry point
itself (its error handling included), so that a hundred of them take seconds;
tests/cli runs the real subprocess.
"""

from __future__ import annotations

import io
import os
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest

from tests.hostile.cases import CliCase, as_params, assert_store

INJECT = "x'; DROP TABLE jobs; --"
UNREACHABLE = "postgresql+psycopg://honed:secret@127.0.0.1:1/nothing"

# Cases on the seeded workspace {ws}; each runs on SQLite and on PostgreSQL.
WORKSPACE_CASES = [
    # --- honed add: what is not a JSONL file ---------------------------------------------------
    CliCase("add-directory", ("add", "-w", "{ws}", "{dir}"), 1, "is a directory", error_line=False),
    CliCase("add-fifo", ("add", "-w", "{ws}", "{fifo}"), 1, "is not a regular file", error_line=False),
    CliCase("add-device", ("add", "-w", "{ws}", "/dev/null"), 1, "is not a regular file", error_line=False),
    CliCase("add-missing", ("add", "-w", "{ws}", "{tmp}/none.jsonl"), 1, "no such file", error_line=False),
    CliCase("add-not-json", ("add", "-w", "{ws}", "{bad}"), 1, "bad.jsonl:1: invalid JSON", error_line=False),
    CliCase("add-not-utf8", ("add", "-w", "{ws}", "{binary}"), 1, "invalid UTF-8", error_line=False),
    CliCase("add-nul-in-text", ("add", "-w", "{ws}", "{nul}"), 1, "NUL character", error_line=False),
    CliCase("add-unknown-track", ("add", "-w", "{ws}", "--track", "nope", "{good}"), 1, "nope", error_line=False),
    CliCase("add-track-path", ("add", "-w", "{ws}", "--track", "../x", "{good}"), 1, "../x", error_line=False),
    CliCase("add-track-sql", ("add", "-w", "{ws}", "--track", INJECT, "{good}"), 1, "track", error_line=False),
    # --- the queue -------------------------------------------------------------------------------
    CliCase("queue-unknown-dataset", ("queue", "add", "-w", "{ws}", "999"), 1, "999"),
    CliCase("queue-dataset-text", ("queue", "add", "-w", "{ws}", "abc"), 1, "abc"),
    CliCase("queue-bad-priority", ("queue", "add", "-w", "{ws}", "1", "--priority", "urgent"), (1, 2), "urgent"),
    CliCase("queue-bad-setting", ("queue", "add", "-w", "{ws}", "1", "--set", "train.lr=-1"), 1, "train.lr"),
    CliCase("queue-unknown-setting", ("queue", "add", "-w", "{ws}", "1", "--set", "nonsense.x=1"), 1, "nonsense"),
    CliCase("queue-setting-no-equals", ("queue", "add", "-w", "{ws}", "1", "--set", "train.lr"), 1, "train.lr"),
    CliCase("queue-track-sql", ("queue", "add", "-w", "{ws}", "1", "--track", INJECT), 1, "track"),
    CliCase("queue-dataset-beyond-int64", ("queue", "add", "-w", "{ws}", "99999999999999999999"), 1,
            "99999999999999999999"),
    CliCase("move-bad-priority", ("queue", "move", "-w", "{ws}", "2", "--priority", "urgent"), (1, 2), "urgent"),
    CliCase("move-unknown-job", ("queue", "move", "-w", "{ws}", "999", "--priority", "high"), 1, "no job 999"),
    CliCase("move-job-text", ("queue", "move", "-w", "{ws}", "abc", "--priority", "high"), (1, 2), "abc"),
    CliCase("move-cancelled-job", ("queue", "move", "-w", "{ws}", "1", "--priority", "high"), 1, "cancelled"),
    CliCase("show-unknown-job", ("queue", "show", "-w", "{ws}", "999"), 1, "no job 999"),
    CliCase("show-job-beyond-int64", ("queue", "show", "-w", "{ws}", "99999999999999999999"), 1,
            "99999999999999999999"),
    CliCase("remove-unknown-job", ("queue", "remove", "-w", "{ws}", "999"), 1, "no job 999"),
    CliCase("remove-cancelled-job", ("queue", "remove", "-w", "{ws}", "1"), 1, "cancelled"),
    CliCase("queue-list-limit-negative", ("queue", "list", "-w", "{ws}", "--limit", "-1"), 2, "--limit"),
    # --- control ----------------------------------------------------------------------------------
    CliCase("pause-cancelled-job", ("pause", "-w", "{ws}", "1", "--wait", "0"), 1, "cancelled"),
    CliCase("pause-unknown-job", ("pause", "-w", "{ws}", "999", "--wait", "0"), 1, "no job 999"),
    CliCase("pause-job-text", ("pause", "-w", "{ws}", "abc", "--wait", "0"), (1, 2), "abc"),
    CliCase("pause-wait-negative", ("pause", "-w", "{ws}", "2", "--wait", "-1"), 2, "--wait"),
    CliCase("pause-nothing-running", ("pause", "-w", "{ws}", "--wait", "0"), 1, "no job is running"),
    CliCase("cancel-unknown-job", ("cancel", "-w", "{ws}", "999", "--wait", "0"), 1, "no job 999"),
    CliCase("events-unknown-job", ("events", "-w", "{ws}", "999"), 1, "no job 999"),
    CliCase("runs-limit-negative", ("runs", "-w", "{ws}", "--limit", "-1"), 2, "--limit"),
    # --- adapters, tracks, deployments --------------------------------------------------------------
    CliCase("adapter-unknown", ("adapters", "show", "-w", "{ws}", "999"), 1, "999"),
    CliCase("adapter-id-text", ("adapters", "show", "-w", "{ws}", "abc"), 2, "Invalid value for 'adapter'"),
    CliCase("deploy-unknown", ("deploy", "-w", "{ws}", "999"), 1, "999"),
    CliCase("deploy-rejected", ("deploy", "-w", "{ws}", "2"), 1, "was rejected"),
    CliCase("approve-not-awaiting", ("approve", "-w", "{ws}", "1"), 1, "approval"),
    CliCase("reject-rejected", ("reject", "-w", "{ws}", "2"), 1, "is rejected"),
    CliCase("rollback-never-deployed", ("rollback", "-w", "{ws}"), 1, "has never been deployed"),
    CliCase("rollback-unknown-track", ("rollback", "-w", "{ws}", "--track", "nope"), 1, "nope"),
    CliCase("track-name-space", ("track", "add", "-w", "{ws}", "bad name"), 1, "track name"),
    CliCase("track-name-path", ("track", "add", "-w", "{ws}", "../etc"), 1, "track name"),
    CliCase("track-name-sql", ("track", "add", "-w", "{ws}", INJECT), 1, "track name"),
    CliCase("track-unknown-base", ("track", "add", "-w", "{ws}", "t2", "--base", "99"), 1, "99"),
    CliCase("learn-nothing-ready", ("learn", "run-now", "-w", "{ws}", "--no-teacher"), 1,
            "no experience is ready to train on"),
    CliCase("learn-unknown-track", ("learn", "run-now", "-w", "{ws}", "--no-teacher", "--track", "nope"), 1,
            "nope"),
    CliCase("learn-status-unknown-track", ("learn", "status", "-w", "{ws}", "--track", "nope"), 1, "nope"),
    # --- what is read, not refused: SQL in a filter is a name like any other --------------------------
    CliCase("datasets-track-sql", ("datasets", "-w", "{ws}", "--track", INJECT, "--json"), 0),
    CliCase("status-json", ("status", "-w", "{ws}", "--json"), 0),
]

# Cases that need no store: a store that cannot be used, files that are not honed.toml, options.
STORELESS_CASES = [
    CliCase("store-unsupported", ("status", "-w", "{plain}"), 1, "unsupported store database 'mysql'",
            env={"HONED_STORE__URL": "mysql://u@h/x"}),
    CliCase("store-unreachable", ("queue", "list", "-w", "{plain}"), 1,
            "cannot reach the store at postgresql+psycopg://honed:***@127.0.0.1:1/nothing",
            env={"HONED_STORE__URL": UNREACHABLE}),
    CliCase("store-url-no-host", ("status", "-w", "{plain}"), 1, "cannot reach the store",
            env={"HONED_STORE__URL": "postgresql+psycopg://u:secret@/nothing?host=/nonexistent"}),
    CliCase("store-sqlite-under-a-file", ("status", "-w", "{plain}"), 1, "{tmp}/afile",
            env={"HONED_STORE__URL": "sqlite:///{tmp}/afile/honed.db"}),
    CliCase("toml-not-utf8", ("status", "-w", "{badtoml}"), 1, "honed.toml: not UTF-8 text"),
    CliCase("toml-broken", ("status", "-w", "{brokentoml}"), 1, "honed.toml"),
    CliCase("toml-unknown-key", ("status", "-w", "{unknownkey}"), 1, "nonsense"),
    CliCase("toml-bad-value", ("status", "-w", "{badvalue}"), 1, "train.lr"),
    CliCase("workspace-missing", ("status", "-w", "{tmp}/nowhere"), 1, "{tmp}/nowhere"),
    CliCase("init-under-a-file", ("init", "{tmp}/afile/ws", "--base", "{base}"), 1, "{tmp}/afile/ws: Not a directory"),
    CliCase("init-in-proc", ("init", "/proc/honed-ws", "--base", "{base}"), 1, "/proc/honed-ws"),
    CliCase("init-base-missing", ("init", "{tmp}/ws-nobase", "--base", "{tmp}/no-such-base"), 1, "no-such-base"),
    CliCase("init-store-unsupported", ("init", "{tmp}/ws-mysql", "--base", "{base}", "--store-url", "mysql://u@h/x"),
            1, "mysql"),
    CliCase("serve-port-too-big", ("serve", "-w", "{plain}", "--port", "99999"), 2, "65535"),
    CliCase("serve-port-negative", ("serve", "-w", "{plain}", "--port", "-1"), 2, "--port"),
    CliCase("serve-port-text", ("serve", "-w", "{plain}", "--port", "http"), 2, "--port"),
    CliCase("serve-public-without-token", ("serve", "-w", "{plain}", "--host", "0.0.0.0", "--port", "0"), 1,
            "token"),
    CliCase("mcp-port-too-big", ("mcp", "-w", "{plain}", "--http", "--port", "99999"), (1, 2), "65535"),
    CliCase("unknown-command", ("explode",), 2, "explode"),
    CliCase("unknown-option", ("status", "--explode"), 2, "--explode"),
]


@dataclass
class Ran:
    code: int
    out: str
    err: str


def run_cli(argv: list[str], env: dict[str, str]) -> Ran:
    """Run the ``honed`` entry point in this process on ``argv``, with ``env`` added."""
    from honed.cli import main

    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, {"COLUMNS": "200", **env}), mock.patch.object(sys, "argv", ["honed", *argv]), \
            redirect_stdout(out), redirect_stderr(err):
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return Ran(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def places(tmp_path_factory, tiny_random_base) -> dict[str, str]:
    """The files and folders the cases name, made once per module."""
    from honed.workspace import init_workspace
    from tests.daemon.conftest import synth

    tmp = tmp_path_factory.mktemp("hostile-cli")
    (tmp / "afile").write_text("x")
    (tmp / "dir").mkdir()
    os.mkfifo(tmp / "pipe.jsonl")
    (tmp / "bad.jsonl").write_text("this is not json\n")
    (tmp / "binary.jsonl").write_bytes(b"\xff\xfe\x00garbage\n")
    (tmp / "nul.jsonl").write_text('{"prompt": "a\\u0000", "completion": "b"}\n')
    good = synth(tmp / "good.jsonl", 4)
    tomls = {"badtoml": b"\xff\xfe[store]\n", "brokentoml": b"[store\nurl = \n",
             "unknownkey": b"[nonsense]\nx = 1\n", "badvalue": b"[train]\nlr = -1\n"}
    for name, text in tomls.items():
        (tmp / name).mkdir()
        (tmp / name / "honed.toml").write_bytes(text)
    plain = init_workspace(tmp / "plain", base=str(tiny_random_base)).root
    return {"tmp": str(tmp), "dir": str(tmp / "dir"), "fifo": str(tmp / "pipe.jsonl"), "bad": str(tmp / "bad.jsonl"),
            "binary": str(tmp / "binary.jsonl"), "nul": str(tmp / "nul.jsonl"), "good": str(good),
            "base": str(tiny_random_base), "plain": str(plain), **{name: str(tmp / name) for name in tomls}}


def check_cli_case(case: CliCase, places: dict[str, str], fingerprint) -> None:
    """Run ``case``; check its exit code, message, the store and that the workspace answers."""
    argv = [part.format(**places) for part in case.argv]
    env = {key: value.format(**places) for key, value in case.env.items()}
    before = fingerprint()
    ran = run_cli(argv, env)
    said = " ".join(line.strip() for line in (ran.err + "\n" + ran.out).splitlines() if line.strip())
    allowed = case.code if isinstance(case.code, tuple) else (case.code,)
    assert ran.code in allowed, f"{case.id}: exit {ran.code}\nstdout: {ran.out[-1500:]}\nstderr: {ran.err[-1500:]}"
    assert "Traceback" not in ran.err + ran.out, f"{case.id}: {ran.err[-2000:]}"
    if ran.code == 1 and case.error_line:
        lines = [line for line in ran.err.splitlines() if line.strip()]
        assert lines and lines[0].startswith("error: "), f"{case.id}: {ran.err!r}"
    if ran.code != 0:
        message = case.message.format(**places)
        assert message, f"{case.id}: a refusal must say which message it expects"
        assert message in said, f"{case.id}: {said[:1500]!r} lacks {message!r}"
    assert ":secret@" not in ran.err + ran.out, f"{case.id}: a store password was shown"
    assert_store(before, fingerprint(), case.stores, case.id)


@pytest.mark.parametrize("case", as_params(WORKSPACE_CASES))
def test_hostile_command_on_a_workspace(seeded, places, case):
    check_cli_case(case, {**places, "ws": str(seeded.ws.root)}, seeded.fingerprint)
    after = run_cli(["status", "-w", str(seeded.ws.root), "--json"], {})
    assert after.code == 0, f"after {case.id}: {after.err}"


@pytest.mark.parametrize("case", as_params(STORELESS_CASES))
def test_hostile_command_without_a_store(places, case):
    from tests.hostile.cases import store_fingerprint

    plain_db = Path(places["plain"]) / "honed.db"

    def fingerprint():
        import sqlalchemy as sa

        engine = sa.create_engine(f"sqlite:///{plain_db}")
        try:
            return store_fingerprint(engine)
        finally:
            engine.dispose()

    check_cli_case(case, places, fingerprint)
    after = run_cli(["status", "-w", places["plain"], "--json"], {})
    assert after.code == 0, f"after {case.id}: {after.err}"
