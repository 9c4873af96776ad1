"""``honed experiences list|exclude|include|delete`` as a user types them, and the
set-aside experiences in ``honed learn status`` (issue 22)."""

from __future__ import annotations

import json

import pytest

from tests.cli_runner import run_honed


@pytest.fixture
def logged(make_workspace, tiny_random_base):
    """A workspace with three experiences on track main; returns (root, ids)."""
    ws = make_workspace(tiny_random_base)
    with ws.open_store() as store:
        ids = [store.add_experience(track="main", messages=[{"role": "user", "content": f"reverse {w}"}],
                                    output=w[::-1], source="logged").id for w in ("abc", "lora", "honed")]
    return str(ws.root), ids


def _listed(root: str, *flags: str) -> list[tuple[int, str | None]]:
    out = run_honed("experiences", "list", "--json", "-w", root, *flags).stdout
    return [(e["id"], e["excluded_reason"]) for e in json.loads(out)]


def test_exclude_include_delete_and_list(logged):
    root, (a, b, c) = logged
    out = run_honed("experiences", "exclude", str(b), "--reason", "has a phone number", "-w", root).stdout
    assert f"experience {b} excluded from training: has a phone number" in out
    assert _listed(root, "--excluded") == [(b, "has a phone number")]
    assert _listed(root, "--included") == [(c, None), (a, None)]
    table = run_honed("experiences", "list", "-w", root).stdout
    assert "has a phone number" in table

    out = run_honed("experiences", "include", str(b), "-w", root).stdout
    assert f"experience {b} is offered to training again (was excluded: has a phone number)" in out
    assert _listed(root, "--excluded") == []

    gone = json.loads(run_honed("experiences", "delete", str(a), "--json", "-w", root).stdout)
    assert gone == {"deleted": a, "track": "main", "trained_run_id": None, "batch_id": None}
    assert [i for i, _ in _listed(root)] == [c, b]


def test_refusals_are_one_line_and_change_nothing(logged):
    root, (a, b, c) = logged
    for args, message in ((("exclude", "999", "--reason", "x"), "no experience 999"),
                          (("include", "999"), "no experience 999"),
                          (("delete", "999"), "no experience 999"),
                          (("exclude", str(a), "--reason", " "), "reason: say why")):
        done = run_honed("experiences", *args, "-w", root, check=False)
        assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr, args
    missing = run_honed("experiences", "exclude", str(a), "-w", root, check=False)
    assert missing.returncode == 2 and "--reason" in missing.stderr
    unknown = run_honed("experiences", "list", "--track", "nope", "-w", root, check=False)
    assert unknown.returncode == 1 and "nope" in unknown.stderr
    assert _listed(root) == [(c, None), (b, None), (a, None)]


def test_learn_status_lists_what_a_batch_set_aside(logged):
    root, (a, b, c) = logged
    from honed.workspace import open_workspace

    with open_workspace(root).open_store() as store:
        store.exclude_experience(b, "set aside: messages[0].role 'tool' is not trained")
        store.exclude_experience(c, "private")
    status = run_honed("learn", "status", "-w", root).stdout
    assert "excluded from training: 2 (1 set aside by a batch" in status
    assert f"experience {b} set aside: messages[0].role 'tool' is not trained" in status
    [state] = json.loads(run_honed("learn", "status", "--json", "-w", root).stdout)
    assert (state["excluded"], state["set_aside"]) == (2, 1)
    assert state["set_aside_recent"] == [{"experience_id": b, "reason": "messages[0].role 'tool' is not trained"}]
    assert _listed(root, "--set-aside") == [(b, "set aside: messages[0].role 'tool' is not trained")]
