"""`settle bench api` end to end on a tiny book: it seeds, serves, times every endpoint and
both exports, writes its report and drops its database. The report's shape is checked, never
its speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from infra.config import Settings
from settle.benchmarks.api import ENDPOINTS
from settle.cli.bench import bench_api_cmd
from sinks.db import connect

pytestmark = pytest.mark.integration


def test_bench_api_runs_end_to_end_and_writes_its_report(stack: Settings,
                                                          tmp_path: Path) -> None:
    result = CliRunner().invoke(bench_api_cmd, [
        "--payments", "2000", "--merchants", "3", "--days", "3", "--clients", "4",
        "--requests", "20", "--out", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "api.json").read_text())

    assert report["database"]["payments"] == 2000
    assert [e["endpoint"] for e in report["endpoints"]] == list(ENDPOINTS)
    for e in report["endpoints"]:
        # Every timed request answered 200 (merchant keys ask only about their merchant).
        assert e["requests"] == 20 and e["statuses"] == {"200": 20} and e["errors"] == 0
        assert 0 < e["p50_ms"] <= e["p99_ms"] <= e["max_ms"]
        assert e["requests_per_s"] > 0
    assert len(report["exports"]) == 2
    for x in report["exports"]:
        # The HTTP export and the raw COPY of its query are the same rows.
        assert x["http"]["rows"] == x["raw_copy"]["rows"] > 0
        assert x["http"]["rows_per_s"] > 0 and x["raw_copy"]["rows_per_s"] > 0
    assert report["exports"][0]["http"]["rows"] == 2000  # the analyst's export: every payment
    assert (tmp_path / "api-server.log").exists()
    for heading in ("p50 ms", "p99 ms", "HTTP rows/s", "COPY rows/s", "report:"):
        assert heading in result.output

    # The bench database is gone.
    with connect(stack.postgres) as conn:
        left = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s",
                            (report["database"]["database"],)).fetchone()
    assert left == (0,)
