"""Observability on the real stack: the pipeline runs, Prometheus scrapes it, every query works.

A prefixed copy of the whole pipeline (six processes and the monitor) serves /metrics on
ports 19201-19207 and is announced to the stack's Prometheus through file_sd with a `run`
label. Once the books balance, while everything still runs, the test checks every
/metrics page with `promtool check metrics`, waits for Prometheus to see every target up,
then sends every rule and dashboard expression to Prometheus's HTTP API.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from infra.config import Settings
from settle import observability as o
from settle.e2e import run_e2e
from settle.processes import ProcessSpec

pytestmark = pytest.mark.e2e

PORT_BASE = 19201
COUNT = 3000


def _query(settings: Settings, expr: str) -> list[dict[str, Any]]:
    url = f"{settings.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def _wait_for(what: str, check: Any, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}; last: {last}")


def test_prometheus_scrapes_every_process_and_every_query_works(
        stack: Settings, tmp_path: Path) -> None:
    dashboards = o.dashboard_queries()
    rules = o.rule_queries()
    assert dashboards, "no dashboard queries found under deploy/grafana/dashboards"
    assert rules, "no rules found under deploy/prometheus/rules"
    seen: dict[str, Any] = {}

    def inspect(procs: list[ProcessSpec], prefix: str, _started_s: float) -> None:
        run = prefix.rstrip(".")
        # Every /metrics page is valid exposition format.
        for spec in procs:
            with urllib.request.urlopen(f"http://127.0.0.1:{spec.metrics_port}/metrics",
                                        timeout=10) as response:
                ok, said = o.check_metrics_text(response.read().decode())
            assert ok, f"promtool check metrics failed for {spec.name}: {said}"

        # Prometheus found every target and scrapes it.
        def all_up() -> bool:
            up = _query(stack, f'up{{job="settle", run="{run}"}} == 1')
            seen["up"] = sorted(r["metric"]["process"] for r in up)
            return len(up) == len(procs)
        _wait_for(f"{len(procs)} targets up", all_up)

        # The books gauge, fed by the monitor's invariant checks, says balanced.
        def books_seen() -> list[dict[str, Any]]:
            return _query(stack, f'settle_books_balanced{{run="{run}"}}')
        books = _wait_for("settle_books_balanced", books_seen)
        balanced = {r["metric"]["invariant"]: r["value"][1] for r in books}
        seen["invariants"] = sorted(balanced)
        assert set(balanced.values()) == {"1"}, balanced
        assert {"journals_balanced", "currencies_balanced", "amounts_consistent",
                "journal_iff_matched", "batch_totals_match_items", "batches_match_ledger",
                "matched_settled_in_time", "refunds_within_capture",
                "payable_matches_batches", "payout_due_matches_payouts"} <= set(balanced)

        # Every routed payment was decided: none counted as left without a terminal state.
        def undecided_seen() -> list[dict[str, Any]]:
            return _query(stack, f'settle_routed_undecided_payments{{run="{run}"}}')
        undecided = _wait_for("settle_routed_undecided_payments", undecided_seen)
        assert {r["metric"]["channel"]: r["value"][1] for r in undecided} == {
            channel: "0" for channel in ("alipay", "wechat_pay", "unionpay", "card")}

        # Lag from the broker's offsets reaches 0 for the drained sinks.
        def sinks_caught_up() -> bool:
            lag = _query(stack, f'sum by (group) (settle_consumer_lag_records{{run="{run}", '
                                f'group=~".*-sink"}})')
            seen["sink_lag"] = {r["metric"]["group"]: r["value"][1] for r in lag}
            return len(lag) == 2 and all(r["value"][1] == "0" for r in lag)
        _wait_for("sink lag 0", sinks_caught_up)

        # One e2e latency observation per payment posted to the ledger.
        def latency_count() -> str:
            r = _query(stack, f'sum(settle_e2e_latency_seconds_count{{run="{run}"}})')
            return r[0]["value"][1] if r else ""
        seen["e2e_count"] = _wait_for("e2e latency observations", latency_count)

        # Give rate() windows two scrapes of the end of the run, then ask every query.
        time.sleep(6)
        seen["results"] = o.check_queries(stack.prometheus_url, [*rules, *dashboards])

    result = run_e2e(stack, tmp_path, COUNT, seed=77, bad_ratio=0.03, rate_per_s=300,
                     timeout_s=300, metrics_port_base=PORT_BASE, inspect=inspect, say=print)
    failed_books = [f"{c.name}: {c.detail}" for c in result.books.checks if not c.ok]
    assert not failed_books, failed_books
    assert "results" in seen, "the pipeline never drained, so nothing was inspected"

    # Payments the channel reversed after their MATCHED were posted (and observed) too.
    matched = result.states.get("MATCHED", 0) + result.states.get("REVERSED", 0)
    assert matched > 0
    assert int(seen["e2e_count"]) == matched, (seen["e2e_count"], matched)

    results: list[o.QueryResult] = seen["results"]
    unparsed = [(r.query.name, r.error) for r in results if not r.ok]
    assert not unparsed, unparsed
    empty = [r.query.name for r in results if r.query.source == "dashboard" and not r.passed]
    assert not empty, f"dashboard panels without data: {empty}"
    print(f"{len(rules)} rule and {len(dashboards)} dashboard queries checked; "
          f"targets up: {seen['up']}; sink lag {seen['sink_lag']}")
