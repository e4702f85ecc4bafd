"""`settle cases` on the real stack: cases read from PostgreSQL rows as the ledger sink keeps
them, actions published to Kafka and read back, the stage's answer waited for."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner

from infra.config import Settings
from infra.registry import registry_client
from producers.clients import read_to_end
from schemas.codec import AvroDeserializer
from schemas.topics import TopicNames
from settle.cases_tool import action_id_for
from settle.cli import cli
from sinks.db import connect

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)


def add_case(conn: Any, case_id: str, payment_id: str, outcome: str, amount_minor: int,
             currency: str, opened_at: datetime, channel: str = "card") -> None:
    """A case and its OPENED event, as the ledger sink writes them from cases.events."""
    event_id = f"{case_id}:OPENED:{payment_id}:r"
    conn.execute(
        "INSERT INTO exception_cases (case_id, payment_id, merchant_id, channel, subject,"
        " subject_id, outcome, opened_by, amount_minor, currency, status, opened_at,"
        " last_event_id, last_event_kind, last_event_at)"
        " VALUES (%s, %s, 'm-1', %s, 'PAYMENT', %s, %s, %s, %s, %s, 'OPEN', %s, %s, 'OPENED',"
        " %s)",
        [case_id, payment_id, channel, payment_id, outcome, f"{payment_id}:r", amount_minor,
         currency, opened_at, event_id, opened_at])
    conn.execute(
        "INSERT INTO case_events (event_id, case_id, payment_id, kind, status, amount_minor,"
        " currency, evidence, occurred_at)"
        " VALUES (%s, %s, %s, 'OPENED', 'OPEN', %s, %s, %s::jsonb, %s)",
        [event_id, case_id, payment_id, amount_minor, currency,
         json.dumps({"expected_amount_minor": str(amount_minor),
                     "detail": "no confirmation within the SLA"}), opened_at])


@pytest.fixture(autouse=True)
def wide_console() -> Iterator[None]:
    # Tables of ids are wide; the shared console measured the terminal at import.
    from settle.cli.common import console

    saved = console.width
    console.width = 220
    yield
    console.width = saved


@pytest.fixture()
def cases(stack: Settings) -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:8]
    ids = {name: f"CS-{tag}{name}" for name in ("missing1", "missing2", "amount")}
    with connect(stack.postgres, autocommit=True) as conn:
        add_case(conn, ids["missing1"], f"pay-{tag}-1", "MISSING_CONFIRMATION", 12_345, "CNY",
                 NOW - timedelta(hours=5))
        add_case(conn, ids["missing2"], f"pay-{tag}-2", "MISSING_CONFIRMATION", 500, "JPY",
                 NOW - timedelta(hours=4))
        add_case(conn, ids["amount"], f"pay-{tag}-3", "AMOUNT_MISMATCH", 9_990, "USD",
                 NOW - timedelta(minutes=5))
    yield ids
    with connect(stack.postgres, autocommit=True) as conn:
        conn.execute("DELETE FROM case_events WHERE case_id = ANY(%s)", [list(ids.values())])
        conn.execute("DELETE FROM exception_cases WHERE case_id = ANY(%s)",
                     [list(ids.values())])


def settle(*args: str) -> Any:
    result = CliRunner().invoke(cli, ["cases", *args], env={"SETTLE_OPERATOR": "ops-alice"})
    return result


def actions_sent(stack: Settings, topic: str) -> list[tuple[str, dict[str, Any]]]:
    decoder = AvroDeserializer(registry_client(stack))
    return [((m.key() or b"").decode(), decoder.decode(m.value()))
            for m in read_to_end(stack.kafka, topic)]


def test_cases_are_listed_shown_and_resolved_through_kafka(
        stack: Settings, prefix: str, cases: dict[str, str]) -> None:
    topic = TopicNames(prefix).case_actions
    listed = settle("list", "--outcome", "MISSING_CONFIRMATION", "--older-than", "3h")
    assert listed.exit_code == 0, listed.output
    assert cases["missing1"] in listed.output and cases["missing2"] in listed.output
    assert cases["amount"] not in listed.output

    shown = settle("show", cases["missing1"])
    assert shown.exit_code == 0, shown.output
    assert "no confirmation within the SLA" in shown.output and "OPENED" in shown.output
    unknown = settle("show", "CS-nothing-here")
    assert unknown.exit_code == 1 and "unknown case" in unknown.output

    one = settle("resolve", cases["amount"], "--action", "force-match", "--remark",
                 "acquirer rounding", "--run-id", "it-one", "--topic-prefix", prefix)
    assert one.exit_code == 0, one.output
    dry = settle("resolve", "--where-outcome", "MISSING_CONFIRMATION", "--older-than", "3h",
                 "--action", "close-no-funds", "--remark", "stale", "--run-id", "it-bulk",
                 "--topic-prefix", prefix, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "2 action(s) would send" in dry.output and "123.45 CNY" in dry.output
    assert len(actions_sent(stack, topic)) == 1  # the dry run sent nothing
    bulk = settle("resolve", "--where-outcome", "MISSING_CONFIRMATION", "--older-than", "3h",
                  "--action", "close-no-funds", "--remark", "stale", "--run-id", "it-bulk",
                  "--topic-prefix", prefix, "--yes")
    assert bulk.exit_code == 0, bulk.output

    sent = {record["case_id"]: (key, record) for key, record in actions_sent(stack, topic)}
    assert set(sent) == set(cases.values())
    key, record = sent[cases["amount"]]
    assert key == record["payment_id"] and record["kind"] == "RESOLVE"
    assert record["resolution"] == "FORCE_MATCH" and record["operator"] == "ops-alice"
    assert record["remark"] == "acquirer rounding"
    assert record["action_id"] == action_id_for("it-one", cases["amount"], "RESOLVE",
                                                "FORCE_MATCH")
    for name in ("missing1", "missing2"):
        _key, record = sent[cases[name]]
        assert record["resolution"] == "CLOSE_NO_FUNDS"
        assert record["action_id"] == action_id_for("it-bulk", cases[name], "RESOLVE",
                                                    "CLOSE_NO_FUNDS")


def test_wait_prints_the_stage_s_answer(stack: Settings, prefix: str,
                                        cases: dict[str, str]) -> None:
    case_id = cases["missing1"]
    with connect(stack.postgres, autocommit=True) as conn:
        row = conn.execute("SELECT payment_id FROM exception_cases WHERE case_id = %s",
                           [case_id]).fetchone()
    assert row is not None
    payment_id = row[0]
    action_id = action_id_for("it-wait", case_id, "RESOLVE", "MARK_RECEIVED")
    with connect(stack.postgres, autocommit=True) as conn:
        # The stage's answer, as the ledger sink would record it from cases.events.
        conn.execute(
            "INSERT INTO case_events (event_id, case_id, payment_id, kind, status, resolution,"
            " action_id, operator, remark, evidence, occurred_at)"
            " VALUES (%s, %s, %s, 'PROPOSED', 'AWAITING_APPROVAL', 'MARK_RECEIVED', %s,"
            " 'ops-alice', 'funds seen on the statement', '{}'::jsonb, %s)",
            [f"{case_id}:PROPOSED:{action_id}", case_id, payment_id, action_id, NOW])
    waited = settle("resolve", case_id, "--action", "mark-received", "--remark",
                    "funds seen on the statement", "--run-id", "it-wait", "--topic-prefix",
                    prefix, "--wait", "--wait-s", "10")
    assert waited.exit_code == 0, waited.output
    assert "PROPOSED" in waited.output and "AWAITING_APPROVAL" in waited.output
    refused_id = action_id_for("it-refused", case_id, "RESOLVE", "IGNORE")
    with connect(stack.postgres, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO case_events (event_id, case_id, payment_id, kind, status, action_id,"
            " operator, reason, evidence, occurred_at)"
            " VALUES (%s, %s, %s, 'REFUSED', 'AWAITING_APPROVAL', %s, 'ops-alice',"
            " 'APPROVAL_PENDING', '{}'::jsonb, %s)",
            [f"{case_id}:REFUSED:{refused_id}", case_id, payment_id, refused_id, NOW])
    refused = settle("resolve", case_id, "--action", "ignore", "--remark", "dup", "--run-id",
                     "it-refused", "--topic-prefix", prefix, "--wait", "--wait-s", "10")
    assert refused.exit_code == 1 and "APPROVAL_PENDING" in refused.output
