"""An expected failure of the ``honed`` command is one clear line and exit status 1 (2 for
a usage error), never a traceback: stores that cannot be reached or are not supported, a
``honed.toml`` that is not UTF-8, paths that cannot be used. A store password given at
init stays readable by its owner alone."""

from __future__ import annotations

import os
import stat

import pytest

from tests.cli_runner import run_honed

UNREACHABLE = "postgresql+psycopg://honed:secret@127.0.0.1:1/nothing"


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_random_base):
    root = tmp_path_factory.mktemp("cli-errors") / "ws"
    run_honed("init", str(root), "--base", str(tiny_random_base))
    return root


def one_line_error(proc, code: int = 1) -> str:
    """The command's error line, after checking there is nothing else of it."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: "), proc.stderr
    return " ".join(lines)


@pytest.mark.parametrize("command", [["status"], ["queue", "list"], ["runs"], ["adapters", "list"],
                                     ["add", "none.jsonl"]])
def test_an_unreachable_store_is_one_line_naming_it_without_the_password(ws, command):
    proc = run_honed(*command, "-w", str(ws), env={"HONED_STORE__URL": UNREACHABLE}, check=False)
    message = one_line_error(proc)
    assert "cannot reach the store at postgresql+psycopg://honed:***@127.0.0.1:1/nothing" in message
    assert "secret" not in proc.stderr + proc.stdout


def test_an_unsupported_store_names_what_is(ws):
    proc = run_honed("queue", "list", "-w", str(ws), env={"HONED_STORE__URL": "mysql://u@h/x"}, check=False)
    assert "unsupported store database 'mysql'" in one_line_error(proc)


def test_a_honed_toml_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / "honed.toml").write_bytes(b"\xff\xfe[store]\n")
    proc = run_honed("status", "-w", str(tmp_path), check=False)
    message = one_line_error(proc)
    assert f"{tmp_path / 'honed.toml'}: not UTF-8 text" in message


def test_init_where_a_file_is_in_the_way_names_the_path(tmp_path):
    (tmp_path / "afile").write_text("x")
    proc = run_honed("init", str(tmp_path / "afile" / "ws"), check=False)
    assert f"{tmp_path / 'afile' / 'ws'}: Not a directory" in one_line_error(proc)


def test_add_names_a_directory_a_fifo_and_a_device_for_what_they_are(ws, tmp_path):
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    for path, kind in ((tmp_path, "is a directory"), (fifo, "is not a regular file"),
                       ("/dev/null", "is not a regular file"), (tmp_path / "none.jsonl", "no such file")):
        proc = run_honed("add", "-w", str(ws), str(path), check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert kind in proc.stderr, proc.stderr


def test_a_port_out_of_range_is_a_usage_error(ws):
    proc = run_honed("serve", "-w", str(ws), "--port", "99999", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--port" in proc.stderr and "65535" in proc.stderr


@pytest.mark.postgres
def test_a_store_password_given_at_init_is_kept_from_other_users(tmp_path, pg_schema_url, tiny_random_base):
    from sqlalchemy import make_url

    url = make_url(pg_schema_url).set(password="pw-for-test").render_as_string(hide_password=False)
    proc = run_honed("init", str(tmp_path / "ws"), "--base", str(tiny_random_base), "--store-url", url)
    mode = stat.S_IMODE((tmp_path / "ws" / "honed.toml").stat().st_mode)
    assert mode == 0o600, oct(mode)
    assert "warning: the store password is in honed.toml, readable by you alone" in proc.stderr
    assert "HONED_STORE__URL" in proc.stderr


def test_without_a_password_honed_toml_keeps_the_usual_mode(ws):
    assert stat.S_IMODE((ws / "honed.toml").stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
