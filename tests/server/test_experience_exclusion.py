"""Experiences kept out of training or deleted over HTTP: ``POST /v1/experiences/{id}/exclude``
and ``/include``, ``DELETE /v1/experiences/{id}``; the list shows (and filters by) the
exclusion. An unknown id is a 404 and changes nothing (issue 22)."""

from __future__ import annotations

from tests.server.test_experience_capture import GOOD, error_of, post_raw


def _log(client, output: str) -> int:
    answer = client.post("/v1/experiences", json={"messages": GOOD, "output": output})
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def _listed(client, **params) -> list[tuple[int, str | None]]:
    return [(e["id"], e["excluded_reason"]) for e in client.get("/api/experiences", params=params).json()]


def test_exclude_include_and_the_list_filters(client):
    first, second = _log(client, "pong"), _log(client, "pang")
    answer = client.post(f"/v1/experiences/{first}/exclude", json={"reason": "a customer's address"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["excluded_reason"] == "a customer's address" and answer.json()["excluded_at"]
    assert _listed(client) == [(second, None), (first, "a customer's address")]
    assert _listed(client, excluded="true") == [(first, "a customer's address")]
    assert _listed(client, excluded="false") == [(second, None)]
    assert _listed(client, set_aside="true") == []

    answer = client.post(f"/v1/experiences/{first}/include")
    assert answer.status_code == 200 and answer.json()["excluded_reason"] is None
    assert _listed(client, excluded="true") == []


def test_bad_exclusions_are_refused_and_change_nothing(client):
    one = _log(client, "pong")
    for body, status, message in (({}, 400, "reason: Field required"),
                                   ({"reason": ""}, 400, "reason: String should have at least 1 character"),
                                   ({"reason": "x" * 2001}, 400, "at most 2000 characters"),
                                   ({"reason": "   "}, 400, "non-empty")):
        answer = client.post(f"/v1/experiences/{one}/exclude", json=body)
        assert answer.status_code == status and message in error_of(answer), (body, answer.text)
    answer = post_raw(client, f"/v1/experiences/{one}/exclude", '{"reason": "a\\u0000b"}')
    assert answer.status_code == 400 and "reason: contains a NUL character at position 1" in error_of(answer)
    for path in ("/v1/experiences/999/exclude", "/v1/experiences/999/include"):
        answer = client.post(path, json={"reason": "why"})
        assert answer.status_code == 404 and error_of(answer) == "no experience 999"
    assert _listed(client) == [(one, None)]


def test_delete_removes_the_experience_and_an_unknown_id_deletes_nothing(client):
    gone, kept = _log(client, "pong"), _log(client, "pang")
    assert client.post(f"/v1/experiences/{gone}/feedback", json={"thumbs": "down"}).status_code == 200
    answer = client.delete(f"/v1/experiences/{gone}")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"deleted": gone, "track": "main", "trained_run_id": None, "batch_id": None}
    assert client.get(f"/v1/experiences/{gone}").status_code == 404
    for missing in (gone, 999):
        answer = client.delete(f"/v1/experiences/{missing}")
        assert answer.status_code == 404 and error_of(answer) == f"no experience {missing}"
    answer = client.delete(f"/v1/experiences/{2**64}")  # past any id column: refused by the schema, not a crash
    assert answer.status_code == 400 and "experience_id" in error_of(answer)
    assert _listed(client) == [(kept, None)]


def test_learning_status_counts_and_lists_the_set_aside(client, api_ws):
    aside, private, _ = _log(client, "pong"), _log(client, "pang"), _log(client, "pung")
    with api_ws.open_store() as store:
        store.exclude_experience(aside, "set aside: messages[0].role 'tool' is not trained")
    client.post(f"/v1/experiences/{private}/exclude", json={"reason": "private"})
    [state] = client.get("/api/learn").json()
    assert (state["open"], state["excluded"], state["set_aside"]) == (1, 2, 1)
    assert state["set_aside_recent"] == [{"experience_id": aside, "reason": "messages[0].role 'tool' is not trained"}]
    assert _listed(client, set_aside="true") == [(aside, "set aside: messages[0].role 'tool' is not trained")]
    client.post(f"/v1/experiences/{aside}/include")
    [state] = client.get("/api/learn").json()
    assert (state["open"], state["excluded"], state["set_aside"], state["set_aside_recent"]) == (2, 1, 0, [])
