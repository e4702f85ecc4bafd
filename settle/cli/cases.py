"""`settle cases`: list, show and resolve exception cases (one, or in bulk by filter).

Cases are read from PostgreSQL (exception_cases, case_events, kept by the ledger sink). An
action is a CaseAction record on cases.actions, keyed by payment_id: the reconcile stage that
holds the payment applies it and answers on cases.events; rows are never edited by hand.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import click
from rich.table import Table

from settle.cases_tool import (
    ACTIONS,
    APPROVE,
    AWAITING_APPROVAL,
    OPEN,
    REFUSED,
    REJECT,
    RESOLVE,
    RESOLVED,
    CaseCommandError,
    CaseEventRow,
    CaseFilter,
    CaseRow,
    PlannedAction,
    Totals,
    action_name,
    allowed_resolutions,
    format_age,
)
from settle.cli.common import console, err_console, settings
from settlement.cases import CasePolicy

_STATUS_CHOICES = ("open", "awaiting-approval", "resolved", "unresolved", "all")
_SHOWN_ROWS_MAX = 20


def statuses_for(choice: str) -> tuple[str, ...] | None:
    """--status open|awaiting-approval|resolved|unresolved|all -> the CaseStatus symbols."""
    return {
        "open": (OPEN,),
        "awaiting-approval": (AWAITING_APPROVAL,),
        "resolved": (RESOLVED,),
        "unresolved": (OPEN, AWAITING_APPROVAL),
        "all": None,
    }[choice]


@contextmanager
def _clear_errors() -> Iterator[None]:
    """A command that cannot be sent as given: one line, exit code 1."""
    try:
        yield
    except CaseCommandError as exc:
        raise click.ClickException(str(exc)) from None


def _age_option(value: str | None) -> int | None:
    from settle.cases_tool import parse_age_s

    if value is None:
        return None
    try:
        return parse_age_s(value)
    except CaseCommandError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None


def _money(amount_minor: int | None, currency: str | None) -> str:
    from settlement.currencies import format_minor, is_known

    if amount_minor is None:
        return "-"
    if currency is None or not is_known(currency):
        return f"{amount_minor} {currency or ''}".strip()
    return format_minor(amount_minor, currency)


@contextmanager
def _connection() -> Iterator[Any]:
    from sinks.db import connect

    with connect(settings().postgres, autocommit=True) as conn:
        yield conn


def _prefix(topic_prefix: str | None) -> str:
    return settings().runtime.topic_prefix if topic_prefix is None else topic_prefix


def _operator(given: str | None) -> str:
    from settle.cases_tool import checked_operator

    with _clear_errors():
        return checked_operator(given if given is not None else settings().operator)


_filters = [
    click.option("--channel", default=None, help="Only cases of this channel (e.g. card)."),
    click.option("--merchant", "merchant_id", default=None, help="Only this merchant's cases."),
    click.option("--older-than", default=None,
                 help="Only cases opened longer ago than this (e.g. 30m, 2h, 3d, 1d12h)."),
]
_sending = [
    click.option("--operator", default=None,
                 help="Who acts (recorded on the case) [default: SETTLE_OPERATOR]."),
    click.option("--remark", default=None, help="Why (required, kept in the case's history)."),
    click.option("--run-id", default=None,
                 help="Names this run: each action_id is derived from it, the case and the "
                      "action, so sending the same run again applies nothing twice. Default: "
                      "a fresh one, printed."),
    click.option("--wait", is_flag=True,
                 help="Wait for the stage's answers (RESOLVED, PROPOSED, REJECTED or REFUSED "
                      "with its reason) and print them; exit code 1 if any is REFUSED or "
                      "none came within --wait-s."),
    click.option("--wait-s", type=click.FloatRange(min=0), default=30.0, show_default=True,
                 help="How long --wait waits."),
    click.option("--topic-prefix", default=None,
                 help="Prefix every topic name [default: SETTLE_TOPIC_PREFIX]."),
]


def _apply(options: Sequence[Any]) -> Any:
    def decorate(command: Any) -> Any:
        for option in reversed(options):
            command = option(command)
        return command
    return decorate


@click.group("cases")
def cases() -> None:
    """Exception cases: what reconciliation could not decide, for an operator to resolve.

    A case opens for every AMOUNT_MISMATCH, CURRENCY_MISMATCH, MISSING_CONFIRMATION,
    REVERSAL_EXCEPTION, refund exception and rejected dispute. Resolving publishes a
    CaseAction (cases.actions); the stage applies it and the case keeps its whole history.
    Resolutions above the approval limit wait for a second operator (approve or reject).
    The operator comes from --operator or SETTLE_OPERATOR.
    """


@cases.command("list")
@click.option("--status", type=click.Choice(_STATUS_CHOICES), default="unresolved",
              show_default=True, help="Which statuses to list.")
@click.option("--outcome", default=None,
              help="Only cases of this outcome (e.g. AMOUNT_MISMATCH, DISPUTE_REJECTED).")
@_apply(_filters)
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True,
              help="List at most this many (oldest first).")
def cases_list(status: str, outcome: str | None, channel: str | None, merchant_id: str | None,
               older_than: str | None, limit: int) -> None:
    """List exception cases, oldest first, with the amount at stake and their age.

    \b
      settle cases list
      settle cases list --outcome MISSING_CONFIRMATION --older-than 2h --channel card
    """
    from settle.cases_tool import fetch_cases

    selection = CaseFilter(statuses=statuses_for(status), outcome=outcome and outcome.upper(),
                           channel=channel, merchant_id=merchant_id,
                           older_than_s=_age_option(older_than), limit=limit)
    with _connection() as conn:
        rows = fetch_cases(conn, selection)
    console.print(cases_table(rows, f"exception cases ({status})"))
    if len(rows) == limit:
        console.print(f"[yellow]showing the oldest {limit}; --limit shows more[/]")


def cases_table(rows: Sequence[CaseRow], title: str) -> Table:
    table = Table(title=title)
    for column in ("case", "payment", "subject", "outcome", "amount", "status", "age",
                   "channel", "merchant"):
        table.add_column(column, justify="right" if column in ("amount", "age") else "left",
                         no_wrap=column in ("case", "amount"))
    for row in rows:
        subject = row.subject if row.subject_id == row.payment_id else (
            f"{row.subject} {row.subject_id}")
        status = row.status if row.status != RESOLVED else (
            f"{row.status} ({row.resolution or '?'})")
        table.add_row(row.case_id, row.payment_id, subject, row.outcome,
                      _money(row.amount_minor, row.currency), status, format_age(row.age_s),
                      row.channel or "-", row.merchant_id or "-")
    table.caption = f"{len(rows)} case(s)"
    return table


@cases.command("show")
@click.argument("case_id")
def cases_show(case_id: str) -> None:
    """Show CASE_ID and its whole history: who did what, when, why, and the evidence."""
    from settle.cases_tool import fetch_case, fetch_history

    with _connection() as conn, _clear_errors():
        case = fetch_case(conn, case_id)
        history = fetch_history(conn, case_id)
    for table in case_tables(case, history):
        console.print(table)


def case_tables(case: CaseRow, history: Sequence[CaseEventRow]) -> list[Table]:
    head = Table(title=f"case {case.case_id}", show_header=False)
    head.add_column("field")
    head.add_column("value")
    allowed = ", ".join(action_name(r)
                        for r in allowed_resolutions(case.subject, case.outcome))
    for name, value in (
        ("payment", case.payment_id), ("merchant", case.merchant_id or "-"),
        ("channel", case.channel or "-"), ("subject", f"{case.subject} {case.subject_id}"),
        ("outcome", case.outcome), ("opened by", case.opened_by),
        ("amount at stake", _money(case.amount_minor, case.currency)),
        ("status", case.status), ("resolution", case.resolution or "-"),
        ("operator", case.operator or "-"), ("approver", case.approver or "-"),
        ("remark", case.remark or "-"),
        ("opened", f"{case.opened_at:%Y-%m-%d %H:%M:%S %Z} ({format_age(case.age_s)} ago)"
                   if case.opened_at else "- (its OPENED event is not recorded yet)"),
        ("resolved", f"{case.resolved_at:%Y-%m-%d %H:%M:%S %Z}" if case.resolved_at else "-"),
        ("allowed actions", allowed if case.status != RESOLVED else "-"),
    ):
        head.add_row(name, value)
    events = Table(title="history")
    for column in ("when (UTC)", "event", "status", "resolution", "who", "approver", "remark",
                   "reason", "action"):
        events.add_column(column, no_wrap=column in ("when (UTC)", "event"))
    for event in history:
        kind = f"[red]{event.kind}[/]" if event.kind == REFUSED else event.kind
        events.add_row(f"{event.occurred_at:%Y-%m-%d %H:%M:%S}", kind, event.status,
                       event.resolution or "-", event.operator or "-", event.approver or "-",
                       event.remark or "-", event.reason or "-", event.action_id or "-")
    tables = [head, events]
    for event in history:
        if event.evidence:
            evidence = Table(title=f"evidence ({event.kind} {event.occurred_at:%H:%M:%S})")
            evidence.add_column("key")
            evidence.add_column("value")
            for key, value in sorted(event.evidence.items()):
                evidence.add_row(key, value)
            tables.append(evidence)
    return tables


@cases.command("resolve")
@click.argument("case_id", required=False)
@click.option("--action", "action", type=click.Choice(tuple(ACTIONS)), required=True,
              help="force-match (AMOUNT_MISMATCH: settle at the confirmed amount), "
                   "mark-received (MISSING_CONFIRMATION: settle at the expected amount), "
                   "close-no-funds or ignore (close, nothing posted).")
@click.option("--where-outcome", default=None,
              help="Bulk: resolve every OPEN case of this outcome (with the filters below) "
                   "instead of one CASE_ID.")
@_apply(_filters)
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Bulk: at most this many cases (oldest first).")
@_apply(_sending)
@click.option("--dry-run", is_flag=True, help="Show what would be sent, with counts and totals "
                                              "per currency; send nothing.")
@click.option("--yes", is_flag=True, help="Bulk: send without asking.")
def cases_resolve(case_id: str | None, action: str, where_outcome: str | None,
                  channel: str | None, merchant_id: str | None, older_than: str | None,
                  limit: int | None, operator: str | None, remark: str | None,
                  run_id: str | None, wait: bool, wait_s: float, topic_prefix: str | None,
                  dry_run: bool, yes: bool) -> None:
    """Resolve CASE_ID, or in bulk every OPEN case --where-outcome matches.

    \b
      settle cases resolve CS-0123... --action force-match --remark "acquirer rounding"
      settle cases resolve --where-outcome MISSING_CONFIRMATION --older-than 3d \\
          --action close-no-funds --remark "expired, no funds" --dry-run

    The stage answers RESOLVED, or PROPOSED when the amount needs a second operator's
    approval, or REFUSED with a reason code (see --wait).
    """
    from settle.cases_tool import (
        checked_remark,
        fetch_case,
        fetch_cases,
        plan_actions,
        plan_bulk_resolve,
    )

    resolution = ACTIONS[action]
    bulk = where_outcome is not None
    if bulk == (case_id is not None):
        raise click.UsageError("give either CASE_ID or --where-outcome OUTCOME")
    if not bulk and (channel or merchant_id or older_than or limit):
        raise click.UsageError("--channel, --merchant, --older-than and --limit select cases "
                               "for --where-outcome")
    if not bulk and yes:
        raise click.UsageError("--yes only applies to --where-outcome")
    with _clear_errors():
        text = checked_remark(remark)
    who = _operator(operator)
    run = _run_id(run_id)
    older_than_s = _age_option(older_than)
    with _connection() as conn, _clear_errors():
        if bulk:
            outcome = str(where_outcome).upper()
            selection = CaseFilter(statuses=(OPEN,), outcome=outcome, channel=channel,
                                   merchant_id=merchant_id, older_than_s=older_than_s,
                                   limit=limit)
            plan = plan_bulk_resolve(fetch_cases(conn, selection), outcome, resolution, who,
                                     text, run, _now_ms())
            planned = plan.planned
            _print_skipped(plan.skipped)
        else:
            from settle.cases_tool import check_resolve

            case = fetch_case(conn, str(case_id))
            check_resolve(case, resolution)
            planned = plan_actions([case], RESOLVE, resolution, who, text, run, _now_ms())
    if bulk and not planned:
        console.print("no OPEN case matches: nothing to send")
        return
    if bulk and not dry_run and not yes:
        click.confirm(f"send {len(planned)} {action} action(s) as {who}?", abort=True)
    _send_and_report(planned, f"{action} as {who}", run, topic_prefix, dry_run,
                     wait_s if wait else None, settings().processor.cases)


def _print_skipped(skipped: Sequence[tuple[CaseRow, str]]) -> None:
    for case, why in skipped[:_SHOWN_ROWS_MAX]:
        err_console.print(f"[yellow]left out[/] {case.case_id} ({case.payment_id}): {why}")
    if len(skipped) > _SHOWN_ROWS_MAX:
        err_console.print(f"[yellow]... and {len(skipped) - _SHOWN_ROWS_MAX} more left out[/]")


@cases.command("approve")
@click.argument("case_id")
@_apply(_sending)
@click.option("--dry-run", is_flag=True, help="Check and show; send nothing.")
def cases_approve(case_id: str, operator: str | None, remark: str | None, run_id: str | None,
                  wait: bool, wait_s: float, topic_prefix: str | None, dry_run: bool) -> None:
    """Approve the resolution awaiting approval on CASE_ID (by another operator than the one
    who proposed it): the stage then applies it."""
    _decide(case_id, APPROVE, operator, remark, run_id, wait_s if wait else None, topic_prefix,
            dry_run)


@cases.command("reject")
@click.argument("case_id")
@_apply(_sending)
@click.option("--dry-run", is_flag=True, help="Check and show; send nothing.")
def cases_reject(case_id: str, operator: str | None, remark: str | None, run_id: str | None,
                 wait: bool, wait_s: float, topic_prefix: str | None, dry_run: bool) -> None:
    """Reject the resolution awaiting approval on CASE_ID: the case is OPEN again."""
    _decide(case_id, REJECT, operator, remark, run_id, wait_s if wait else None, topic_prefix,
            dry_run)


def _decide(case_id: str, kind: str, operator: str | None, remark: str | None,
            run_id: str | None, wait_s: float | None, topic_prefix: str | None,
            dry_run: bool) -> None:
    from settle.cases_tool import (
        check_decision,
        checked_remark,
        fetch_case,
        fetch_history,
        plan_actions,
    )

    with _clear_errors():
        text = checked_remark(remark)
    who = _operator(operator)
    run = _run_id(run_id)
    with _connection() as conn, _clear_errors():
        case = fetch_case(conn, case_id)
        check_decision(case, fetch_history(conn, case_id), who, kind)
        planned = plan_actions([case], kind, None, who, text, run, _now_ms())
    _send_and_report(planned, f"{kind.lower()} as {who}", run, topic_prefix, dry_run, wait_s)


def _run_id(given: str | None) -> str:
    from settle.cases_tool import checked_run_id, new_run_id

    with _clear_errors():
        return checked_run_id(given) if given is not None else new_run_id()


def _now_ms() -> int:
    from producers.clients import wall_clock_ms

    return wall_clock_ms()


def _send_and_report(planned: list[PlannedAction], what: str, run_id: str,
                     topic_prefix: str | None, dry_run: bool, wait_s: float | None,
                     policy: CasePolicy | None = None) -> None:
    """Send (unless a dry run), print what was sent, then perhaps wait for the answers.
    `policy`: the stage's approval limits, to say which resolutions will wait for a second
    operator (None for an approval or a rejection)."""
    from schemas.topics import TopicNames

    topic = TopicNames(_prefix(topic_prefix)).case_actions
    if not dry_run:
        _publish(planned, topic)
    for table in planned_tables(planned, what, topic, run_id, dry_run, policy):
        console.print(table)
    if dry_run:
        return
    console.print(f"run id [bold]{run_id}[/]: send again with --run-id {run_id} to retry "
                  "without applying anything twice")
    if wait_s is not None:
        _wait_and_report(planned, wait_s)


def _publish(planned: list[PlannedAction], topic: str) -> None:
    from infra.registry import registry_client
    from producers.order_flow import progress_bar
    from producers.producer import AvroProducer
    from settle.cases_tool import publish_actions

    conf = settings()
    with registry_client(conf) as registry, AvroProducer(
        conf.kafka, registry, client_id="cases-cli", signer=None
    ) as producer, progress_bar() as progress:
        task = progress.add_task("case actions", total=len(planned), rate="")
        publish_actions(producer, topic, planned, on_sent=lambda _a: progress.advance(task))


def planned_tables(planned: Sequence[PlannedAction], what: str, topic: str, run_id: str,
                   dry_run: bool, policy: CasePolicy | None = None) -> list[Table]:
    from settle.cases_tool import needs_approval

    verb = "would send" if dry_run else "sent"
    tables = []
    if len(planned) <= _SHOWN_ROWS_MAX:
        table = Table(title=f"case actions {verb} to {topic}: {what}")
        columns = ["case", "payment", "outcome", "amount", "age", "action_id"]
        if policy is not None:
            columns.append("approval")
        for column in columns:
            table.add_column(column, justify="right" if column in ("amount", "age") else "left",
                             no_wrap=True)
        for action in planned:
            case = action.case
            row = [case.case_id, case.payment_id, case.outcome,
                   _money(case.amount_minor, case.currency), format_age(case.age_s),
                   action.action_id]
            if policy is not None:
                row.append("2nd operator" if needs_approval(case, policy) else "-")
            table.add_row(*row)
        tables.append(table)
    totals = Totals.of((a.case for a in planned), policy)
    summary = Table(title=f"{len(planned)} action(s) {verb} ({what}; run {run_id})")
    summary.add_column("currency")
    summary.add_column("cases", justify="right")
    summary.add_column("amount at stake", justify="right")
    if policy is not None:
        summary.add_column("await approval", justify="right")
    for currency in sorted(totals.cases):
        amount = totals.amount_minor[currency]
        row = [currency, str(totals.cases[currency]),
               _money(amount, currency) if currency != "-" else "-"]
        if policy is not None:
            row.append(str(totals.awaiting_approval[currency]))
        summary.add_row(*row)
    tables.append(summary)
    return tables


def _wait_and_report(planned: Sequence[PlannedAction], wait_s: float) -> None:
    from settle.cases_tool import wait_for_answers

    ids = [a.action_id for a in planned]
    with _connection() as conn, console.status("waiting for the stage's answers...") as status:
        answers = wait_for_answers(
            conn, ids, wait_s,
            on_poll=lambda n: status.update(f"answered {n} of {len(ids)}..."))
    table = Table(title="answers (cases.events, as recorded)")
    for column in ("case", "answer", "status", "resolution", "reason"):
        table.add_column(column)
    counts: dict[str, int] = {}
    for action in planned:
        answer = answers.get(action.action_id)
        kind = answer.kind if answer is not None else "NO ANSWER"
        counts[kind] = counts.get(kind, 0) + 1
        if len(planned) <= _SHOWN_ROWS_MAX or answer is None or answer.kind == REFUSED:
            table.add_row(action.case.case_id,
                          f"[red]{kind}[/]" if kind in (REFUSED, "NO ANSWER") else kind,
                          answer.status if answer else "-",
                          (answer.resolution or "-") if answer else "-",
                          (answer.reason or "-") if answer else f"none within {wait_s:g}s")
    table.caption = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    console.print(table)
    if counts.get(REFUSED) or counts.get("NO ANSWER"):
        err_console.print("[bold red]some actions were refused or not answered[/]")
        sys.exit(1)
