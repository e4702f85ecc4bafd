"""`settle cases`: parsing, local checks, the bulk selection and dry run, and the
deterministic action ids, against fake tables (no database, no broker)."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner

from infra.config import load
from schemas.codec import AvroSerializer
from schemas.registry import InMemoryRegistry
from settle import cases_tool
from settle.cases_tool import (
    ACTION_ID_PATTERN,
    APPROVE,
    AWAITING_APPROVAL,
    CLOSE_NO_FUNDS,
    FORCE_MATCH,
    IGNORE,
    MARK_RECEIVED,
    OPEN,
    PROPOSED,
    REJECT,
    RESOLVE,
    RESOLVED,
    CaseCommandError,
    CaseEventRow,
    CaseFilter,
    CaseRow,
    Totals,
    action_id_for,
    allowed_resolutions,
    case_action,
    check_decision,
    check_resolve,
    format_age,
    needs_approval,
    parse_age_s,
    plan_bulk_resolve,
    publish_actions,
    select_cases_sql,
)
from settle.cli import cli
from settlement.cases import CasePolicy

# The package's `cases` attribute is the click group; the module is reached by name.
cases_cli = importlib.import_module("settle.cli.cases")

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def case(n: int, outcome: str = "AMOUNT_MISMATCH", status: str = OPEN,
         amount: int | None = 12_345, currency: str | None = "CNY", **kw: Any) -> CaseRow:
    values: dict[str, Any] = dict(
        case_id=f"CS-{n:024x}", payment_id=f"pay-{n}", merchant_id="m-0001", channel="card",
        subject="PAYMENT", subject_id=f"pay-{n}", outcome=outcome, opened_by=f"pay-{n}:r",
        amount_minor=amount, currency=currency, status=status, resolution=None, operator=None,
        approver=None, remark=None, opened_at=T0, resolved_at=None, age_s=7200)
    values.update(kw)
    return CaseRow(**values)


def event(kind: str, operator: str | None = None, **kw: Any) -> CaseEventRow:
    values: dict[str, Any] = dict(
        event_id=f"e:{kind}", case_id="CS-1", kind=kind, status=OPEN, resolution=None,
        action_id=None, operator=operator, approver=None, remark=None, reason=None,
        evidence={}, occurred_at=T0)
    values.update(kw)
    return CaseEventRow(**values)


# -- parsing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("45s", 45), ("30m", 1800), ("2h", 7200), ("3d", 259_200), ("1w", 604_800),
    ("1d12h", 129_600), (" 2H ", 7200), ("0s", 0),
])
def test_ages_parse_to_seconds(text: str, seconds: int) -> None:
    assert parse_age_s(text) == seconds


@pytest.mark.parametrize("text", ["", "2", "h", "2x", "-2h", "2.5h", "2h junk", "d3"])
def test_a_malformed_age_is_refused(text: str) -> None:
    with pytest.raises(CaseCommandError, match="unit"):
        parse_age_s(text)


def test_ages_print_in_their_two_largest_units() -> None:
    assert format_age(0) == "0s"
    assert format_age(45) == "45s"
    assert format_age(7500) == "2h 5m"
    assert format_age(3 * 86_400 + 4 * 3600 + 59) == "3d 4h"
    assert format_age(-5) == "0s"


def test_the_filter_becomes_parameters_never_text() -> None:
    sql, params = select_cases_sql(CaseFilter(
        statuses=(OPEN,), outcome="MISSING_CONFIRMATION", channel="CARD",
        merchant_id="m-0001; DROP TABLE x", older_than_s=7200, limit=50))
    assert "DROP" not in sql and sql.count("%s") == len(params) == 6
    assert "COALESCE(opened_at, last_event_at) < now() - make_interval(secs => %s)" in sql
    assert params == [[OPEN], "MISSING_CONFIRMATION", "CARD", "m-0001; DROP TABLE x", 7200, 50]
    assert "lower(channel) = lower(%s)" in sql and sql.rstrip().endswith("LIMIT %s")
    everything, none = select_cases_sql(CaseFilter(statuses=None))
    assert none == [] and "WHERE TRUE ORDER BY COALESCE(opened_at, last_event_at)" in everything


# -- checks ---------------------------------------------------------------------------------------


def test_each_outcome_allows_its_resolutions() -> None:
    # The stage's own rule (settlement.cases), checked before anything is sent.
    assert allowed_resolutions("PAYMENT", "AMOUNT_MISMATCH") == (
        FORCE_MATCH, CLOSE_NO_FUNDS, IGNORE)
    assert allowed_resolutions("PAYMENT", "MISSING_CONFIRMATION") == (
        MARK_RECEIVED, CLOSE_NO_FUNDS, IGNORE)
    for subject, other in (("PAYMENT", "CURRENCY_MISMATCH"), ("PAYMENT", "REVERSAL_EXCEPTION"),
                           ("REFUND", "AMOUNT_MISMATCH"), ("REFUND", "LATE_CONFIRMATION"),
                           ("DISPUTE", "DISPUTE_REJECTED")):
        assert allowed_resolutions(subject, other) == (CLOSE_NO_FUNDS, IGNORE)


def test_an_action_not_allowed_names_the_allowed_ones() -> None:
    with pytest.raises(CaseCommandError, match="allowed: mark-received, close-no-funds, ignore"):
        check_resolve(case(1, "MISSING_CONFIRMATION"), FORCE_MATCH)
    with pytest.raises(CaseCommandError, match="allowed: close-no-funds, ignore"):
        check_resolve(case(1, "CURRENCY_MISMATCH"), FORCE_MATCH)
    with pytest.raises(CaseCommandError, match="REFUND AMOUNT_MISMATCH case; allowed: close"):
        check_resolve(case(1, subject="REFUND", subject_id="rf-1"), FORCE_MATCH)
    check_resolve(case(1, "AMOUNT_MISMATCH"), FORCE_MATCH)


def test_a_resolved_or_pending_case_is_not_resolved_again() -> None:
    with pytest.raises(CaseCommandError, match="already resolved"):
        check_resolve(case(1, status=RESOLVED, resolution=IGNORE), IGNORE)
    with pytest.raises(CaseCommandError, match="awaiting approval"):
        check_resolve(case(1, status=AWAITING_APPROVAL), IGNORE)


def test_approval_needs_a_pending_resolution_and_another_operator() -> None:
    pending = case(1, status=AWAITING_APPROVAL, operator="alice")
    history = [event("OPENED"), event(PROPOSED, "alice")]
    with pytest.raises(CaseCommandError, match="another operator must approve"):
        check_decision(pending, history, "alice", APPROVE)
    with pytest.raises(CaseCommandError, match="another operator must approve"):
        check_decision(pending, history, " ALICE", APPROVE)
    check_decision(pending, history, "bob", APPROVE)
    check_decision(pending, history, "bob", REJECT)
    with pytest.raises(CaseCommandError, match="nothing to reject"):
        check_decision(case(1), history, "bob", REJECT)


def test_the_remark_and_the_operator_are_required() -> None:
    for empty in (None, "", "   "):
        with pytest.raises(CaseCommandError, match="--remark is required"):
            cases_tool.checked_remark(empty)
        with pytest.raises(CaseCommandError, match="SETTLE_OPERATOR"):
            cases_tool.checked_operator(empty)
    assert cases_tool.checked_operator("  alice ") == "alice"


def test_the_operator_setting_is_parsed_in_infra() -> None:
    assert load({"SETTLE_OPERATOR": " ops-alice "}).operator == "ops-alice"
    assert load({}).operator == ""


# -- action ids and records -----------------------------------------------------------------------


def test_action_ids_are_deterministic_per_run_case_and_action() -> None:
    a = action_id_for("run-1", "CS-1", RESOLVE, IGNORE)
    assert a == action_id_for("run-1", "CS-1", RESOLVE, IGNORE)
    others = {action_id_for("run-2", "CS-1", RESOLVE, IGNORE),
              action_id_for("run-1", "CS-2", RESOLVE, IGNORE),
              action_id_for("run-1", "CS-1", RESOLVE, CLOSE_NO_FUNDS),
              action_id_for("run-1", "CS-1", APPROVE, None)}
    assert a not in others and len(others) == 4
    assert ACTION_ID_PATTERN.fullmatch(a)


def test_a_bulk_run_sent_again_repeats_its_action_ids() -> None:
    rows = [case(n, "MISSING_CONFIRMATION") for n in range(5)]
    first = plan_bulk_resolve(rows, "MISSING_CONFIRMATION", CLOSE_NO_FUNDS, "alice", "stale",
                              "run-7", 1).planned
    again = plan_bulk_resolve(list(reversed(rows)), "MISSING_CONFIRMATION", CLOSE_NO_FUNDS,
                              "alice", "stale", "run-7", 2).planned
    assert sorted(a.action_id for a in first) == sorted(a.action_id for a in again)
    assert len({a.action_id for a in first}) == 5
    other_run = plan_bulk_resolve(rows, "MISSING_CONFIRMATION", CLOSE_NO_FUNDS, "alice",
                                  "stale", "run-8", 1).planned
    assert not {a.action_id for a in first} & {a.action_id for a in other_run}


def test_the_bulk_selection_takes_only_open_cases_of_the_outcome() -> None:
    rows = [case(1, "MISSING_CONFIRMATION"), case(2, "MISSING_CONFIRMATION", AWAITING_APPROVAL),
            case(3, "MISSING_CONFIRMATION", RESOLVED), case(4, "AMOUNT_MISMATCH"),
            case(5, "MISSING_CONFIRMATION")]
    refund = case(6, "MISSING_CONFIRMATION", subject="REFUND", subject_id="rf-6")
    plan = plan_bulk_resolve([*rows, refund], "MISSING_CONFIRMATION", MARK_RECEIVED, "alice",
                             "ok", "run-1", 1)
    assert [a.case.case_id for a in plan.planned] == [rows[0].case_id, rows[4].case_id]
    assert [(c.case_id, why) for c, why in plan.skipped] == [
        (refund.case_id, "mark-received is not allowed for a REFUND case")]
    closing = plan_bulk_resolve([*rows, refund], "MISSING_CONFIRMATION", CLOSE_NO_FUNDS,
                                "alice", "ok", "run-1", 1)
    assert len(closing.planned) == 3 and not closing.skipped
    with pytest.raises(CaseCommandError, match="not allowed for MISSING_CONFIRMATION"):
        plan_bulk_resolve(rows, "MISSING_CONFIRMATION", FORCE_MATCH, "alice", "ok", "run-1", 1)


def test_the_record_is_a_valid_case_action_keyed_by_payment() -> None:
    record = case_action(case(3), RESOLVE, FORCE_MATCH, "alice", "rounding", "ca-1", 1_000)
    assert record == {"action_id": "ca-1", "case_id": case(3).case_id, "payment_id": "pay-3",
                      "kind": RESOLVE, "resolution": FORCE_MATCH, "operator": "alice",
                      "remark": "rounding", "requested_at": 1_000}
    approve = case_action(case(3), APPROVE, FORCE_MATCH, "bob", "ok", "ca-2", 1_000)
    assert approve["resolution"] is None
    for built in (record, approve):
        data = AvroSerializer(InMemoryRegistry(), "cases.actions", "CaseAction").encode(built)
        assert data[:1] == b"\x00"
    sent: list[tuple[str, str, Any]] = []

    class Sender:
        def send(self, topic: str, key: str, value: Any, headers: Any = None) -> None:
            sent.append((topic, key, value))

    planned = plan_bulk_resolve([case(1), case(2)], "AMOUNT_MISMATCH", IGNORE, "a", "r", "x",
                                1).planned
    assert publish_actions(Sender(), "cases.actions", planned) == 2
    assert [(t, k) for t, k, _ in sent] == [("cases.actions", "pay-1"), ("cases.actions", "pay-2")]
    with pytest.raises(CaseCommandError, match="must match"):
        case_action(case(3), RESOLVE, IGNORE, "a", "r", "bad id", 1)


def test_totals_are_per_currency_with_what_awaits_approval() -> None:
    rows = [case(1, amount=100), case(2, amount=250), case(3, currency="JPY"),
            case(4, amount=None, currency=None)]
    totals = Totals.of(rows)
    assert totals.cases == {"CNY": 2, "JPY": 1, "-": 1}
    assert totals.amount_minor == {"CNY": 350, "JPY": 12_345, "-": 0}
    assert not totals.awaiting_approval
    policy = CasePolicy(200, {"JPY": 10_000})
    assert [needs_approval(r, policy) for r in rows] == [False, True, True, False]
    assert Totals.of(rows, policy).awaiting_approval == {"CNY": 1, "JPY": 1}


# -- the command line -----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def wide_console() -> Iterator[None]:
    # Tables of ids are wide; the shared console measured the terminal at import.
    saved = cases_cli.console.width
    cases_cli.console.width = 220
    yield
    cases_cli.console.width = saved


class FakeTables:
    """The two tables the commands read, and what the commands would publish."""

    def __init__(self, rows: Sequence[CaseRow], history: Sequence[CaseEventRow] = ()) -> None:
        self.rows = list(rows)
        self.history = list(history)
        self.published: list[dict[str, Any]] = []
        self.selections: list[CaseFilter] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        @contextlib.contextmanager
        def connection() -> Iterator[object]:
            yield object()

        def fetch_cases(_conn: object, selection: CaseFilter) -> list[CaseRow]:
            self.selections.append(selection)
            return [r for r in self.rows
                    if (selection.statuses is None or r.status in selection.statuses)
                    and (selection.outcome is None or r.outcome == selection.outcome)]

        def fetch_case(_conn: object, case_id: str) -> CaseRow:
            for row in self.rows:
                if row.case_id == case_id:
                    return row
            raise CaseCommandError(f"unknown case {case_id!r}")

        monkeypatch.setattr(cases_cli, "_connection", connection)
        monkeypatch.setattr(cases_tool, "fetch_cases", fetch_cases)
        monkeypatch.setattr(cases_tool, "fetch_case", fetch_case)
        monkeypatch.setattr(cases_tool, "fetch_history", lambda _c, _id: self.history)
        monkeypatch.setattr(cases_cli, "_publish", lambda planned, _topic: self.published.extend(
            dict(a.record) for a in planned))


def run(args: list[str], env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli, ["cases", *args], env={"SETTLE_OPERATOR": "", **(env or {})})


@pytest.mark.parametrize("sub", ["list", "show", "resolve", "approve", "reject"])
def test_every_subcommand_has_help(sub: str) -> None:
    result = run([sub, "--help"])
    assert result.exit_code == 0 and "Usage: cli cases" in result.output


def test_resolve_without_operator_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeTables([case(1)]).install(monkeypatch)
    result = run(["resolve", case(1).case_id, "--action", "ignore", "--remark", "dup"])
    assert result.exit_code == 1 and "SETTLE_OPERATOR" in result.output


def test_resolve_takes_the_operator_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    tables = FakeTables([case(1)])
    tables.install(monkeypatch)
    result = run(["resolve", case(1).case_id, "--action", "force-match", "--remark", "rounding",
                  "--run-id", "r1"], env={"SETTLE_OPERATOR": "alice"})
    assert result.exit_code == 0, result.output
    [sent] = tables.published
    assert sent["operator"] == "alice" and sent["resolution"] == FORCE_MATCH
    assert sent["action_id"] == action_id_for("r1", case(1).case_id, RESOLVE, FORCE_MATCH)
    assert "--run-id r1" in result.output


def test_resolve_refuses_an_unknown_case_an_empty_remark_and_a_wrong_action(
        monkeypatch: pytest.MonkeyPatch) -> None:
    tables = FakeTables([case(1, "MISSING_CONFIRMATION")])
    tables.install(monkeypatch)
    ok = ["--operator", "alice"]
    unknown = run(["resolve", "CS-nope", "--action", "ignore", "--remark", "x", *ok])
    assert unknown.exit_code == 1 and "unknown case 'CS-nope'" in unknown.output
    empty = run(["resolve", case(1).case_id, "--action", "ignore", "--remark", " ", *ok])
    assert empty.exit_code == 1 and "--remark is required" in empty.output
    wrong = run(["resolve", case(1).case_id, "--action", "force-match", "--remark", "x", *ok])
    assert wrong.exit_code == 1
    assert "allowed: mark-received, close-no-funds, ignore" in wrong.output
    both = run(["resolve", case(1).case_id, "--where-outcome", "AMOUNT_MISMATCH", "--action",
                "ignore", "--remark", "x", *ok])
    assert both.exit_code == 2 and "either CASE_ID or --where-outcome" in both.output
    age = run(["resolve", "--where-outcome", "X", "--older-than", "soon", "--action", "ignore",
               "--remark", "x", *ok])
    assert age.exit_code == 2 and "--older-than" in age.output
    assert tables.published == []


def test_a_bulk_dry_run_shows_counts_and_totals_and_sends_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [case(1, "MISSING_CONFIRMATION", amount=1_000),
            case(2, "MISSING_CONFIRMATION", amount=2_500),
            case(3, "MISSING_CONFIRMATION", amount=700, currency="JPY"),
            case(4, "MISSING_CONFIRMATION", AWAITING_APPROVAL),
            case(5, "AMOUNT_MISMATCH")]
    tables = FakeTables(rows)
    tables.install(monkeypatch)
    result = run(["resolve", "--where-outcome", "missing_confirmation", "--older-than", "2h",
                  "--channel", "card", "--action", "close-no-funds", "--remark", "stale",
                  "--operator", "alice", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert tables.published == []
    [selection] = tables.selections
    assert selection == CaseFilter(statuses=(OPEN,), outcome="MISSING_CONFIRMATION",
                                   channel="card", older_than_s=7200)
    assert "3 action(s) would send" in result.output and "await approval" in result.output
    assert "35.00 CNY" in result.output and "700 JPY" in result.output
    for row in rows[:3]:
        assert row.case_id in result.output
    assert rows[3].case_id not in result.output


def test_a_bulk_run_asks_unless_yes_and_then_sends_each_case(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [case(n, "CURRENCY_MISMATCH") for n in range(30)]
    tables = FakeTables(rows)
    tables.install(monkeypatch)
    args = ["resolve", "--where-outcome", "CURRENCY_MISMATCH", "--action", "ignore",
            "--remark", "test data", "--operator", "alice", "--run-id", "bulk-1"]
    declined = CliRunner().invoke(cli, ["cases", *args], input="n\n")
    assert declined.exit_code == 1 and tables.published == []
    result = run([*args, "--yes"])
    assert result.exit_code == 0, result.output
    assert len(tables.published) == 30
    assert {r["action_id"] for r in tables.published} == {
        action_id_for("bulk-1", r.case_id, RESOLVE, IGNORE) for r in rows}
    assert "30 action(s) sent" in result.output
    nothing = run(["resolve", "--where-outcome", "AMOUNT_MISMATCH", "--action", "ignore",
                   "--remark", "x", "--operator", "alice"])
    assert nothing.exit_code == 0 and "nothing to send" in nothing.output


def test_approve_checks_the_second_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    pending = case(1, status=AWAITING_APPROVAL, operator="alice")
    tables = FakeTables([pending], [event("OPENED"), event(PROPOSED, "alice")])
    tables.install(monkeypatch)
    same = run(["approve", pending.case_id, "--remark", "ok", "--operator", "alice"])
    assert same.exit_code == 1 and "another operator" in same.output
    ok = run(["approve", pending.case_id, "--remark", "checked", "--operator", "bob"])
    assert ok.exit_code == 0, ok.output
    [sent] = tables.published
    assert sent["kind"] == APPROVE and sent["resolution"] is None and sent["operator"] == "bob"
    tables.rows = [replace(pending, status=OPEN)]
    nothing = run(["reject", pending.case_id, "--remark", "no", "--operator", "bob"])
    assert nothing.exit_code == 1 and "nothing to reject" in nothing.output


def test_show_prints_the_case_its_history_and_evidence(monkeypatch: pytest.MonkeyPatch) -> None:
    row = case(1, status=RESOLVED, resolution=FORCE_MATCH, operator="alice", approver="bob",
               remark="rounding")
    history = [event("OPENED", evidence={"expected_amount_minor": "12345",
                                         "confirmed_amount_minor": "12340"}),
               event(PROPOSED, "alice", status=AWAITING_APPROVAL, resolution=FORCE_MATCH,
                     remark="rounding", action_id="ca-1"),
               event(RESOLVED, "alice", status=RESOLVED, resolution=FORCE_MATCH,
                     approver="bob", remark="checked", action_id="ca-2")]
    FakeTables([row], history).install(monkeypatch)
    result = CliRunner().invoke(cli, ["cases", "show", row.case_id])
    assert result.exit_code == 0, result.output
    for text in ("history", "PROPOSED", "RESOLVED", "bob", "checked", "confirmed_amount_minor",
                 "12340", "123.45 CNY"):
        assert text in result.output, text
