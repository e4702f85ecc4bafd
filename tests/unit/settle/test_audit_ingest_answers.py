"""Channel disputes and case actions each answered: read = answered + dead-lettered."""

from __future__ import annotations

from settle.audit_ingest import (
    case_action_key,
    case_event_key,
    dispute_key,
    dispute_result_key,
    join_answers,
)


def _result(event: str, event_id: str, dispute_id: str = "d1") -> dict[str, str]:
    return {"result_id": f"p1/{dispute_id}:{event}:{event_id}", "payment_id": "p1",
            "dispute_id": dispute_id, "event": event}


def test_a_dispute_result_answers_the_event_its_result_id_ends_with() -> None:
    # event ids may hold ':' (the result id is split by the result's own fields, not by ':')
    assert dispute_result_key(_result("OPENED", "ev:1")) == ("p1", "d1", "ev:1")
    assert dispute_key({"payment_id": "p1", "dispute_id": "d1", "event_id": "ev:1"}) == (
        "p1", "d1", "ev:1")
    assert dispute_result_key({**_result("OPENED", "e1"), "result_id": "something else"}) is None
    assert dispute_result_key({**_result("OPENED", "e1"), "result_id": "p1/d1:OPENED:"}) is None


def test_every_channel_dispute_answered_once_or_more_balances() -> None:
    inputs = [("d/0/0", ("p1", "d1", "e1")), ("d/0/1", ("p1", "d1", "e2")),
              ("d/0/2", ("p1", "d1", "e1")),  # a redelivery: the first's results answer it
              ("d/0/3", None)]  # undecodable, dead-lettered
    # a lost dispute first seen: OPENED and LOST both answer e2
    answers = [("p1", "d1", "e1"), ("p1", "d1", "e2"), ("p1", "d1", "e2")]
    audit = join_answers(inputs, answers, {"d/0/3"})
    assert (audit.read, audit.answered, audit.dead_lettered) == (4, 3, 1)
    assert audit.balanced and audit.orphan_answers == []


def test_an_unanswered_dispute_is_named_and_breaks_the_balance() -> None:
    inputs = [("d/0/0", ("p1", "d1", "e1")), ("d/1/5", ("p2", "d9", "e7")), ("d/0/9", None)]
    audit = join_answers(inputs, [("p1", "d1", "e1"), ("p3", "d3", "e3")], set())
    assert audit.unanswered == ["d/1/5", "d/0/9"]
    assert audit.orphan_answers == ["p3/d3/e3"]
    assert not audit.balanced


def test_case_actions_are_answered_by_the_events_carrying_their_action_id() -> None:
    action = {"case_id": "CS-1", "action_id": "a1"}
    assert case_action_key(action) == ("CS-1", "a1")
    assert case_event_key({"case_id": "CS-1", "action_id": "a1"}) == ("CS-1", "a1")
    assert case_event_key({"case_id": "CS-1", "action_id": None}) is None  # OPENED: no action
    inputs = [("a/0/0", ("CS-1", "a1")), ("a/0/1", ("CS-1", "a2")), ("a/0/2", ("CS-1", "a1"))]
    audit = join_answers(inputs, [("CS-1", "a1")], set())
    assert audit.unanswered == ["a/0/1"] and not audit.balanced
