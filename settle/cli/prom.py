"""`settle prom check`: the scrape targets, the /metrics pages and every shipped PromQL query."""

from __future__ import annotations

import sys
import urllib.request

import click
from rich.table import Table

from settle.cli.common import console, settings


@click.group("prom")
def prom() -> None:
    """Check Prometheus: targets, metric pages, and the rules' and dashboard's queries."""


@prom.command("check")
@click.option("--require-data/--no-require-data", default=True, show_default=True,
              help="Fail when a dashboard query returns no series (rules need only parse).")
@click.option("--metrics/--no-metrics", "check_metrics", default=True, show_default=True,
              help="Also run `promtool check metrics` on every `settle` target's /metrics.")
@click.option("--job", default="settle", show_default=True,
              help="Scrape job whose targets must all be up.")
@click.option("--verbose", is_flag=True, help="List every query, not only the failing ones.")
def check(require_data: bool, check_metrics: bool, job: str, verbose: bool) -> None:
    """Ask Prometheus ($SETTLE_PROMETHEUS_URL) whether the pipeline is observable.

    \b
    1. every active target of the job is up;
    2. every target's /metrics passes `promtool check metrics` (--metrics);
    3. every expression in deploy/prometheus/rules/*.yml parses and evaluates;
    4. every panel query of deploy/grafana/dashboards/*.json parses and returns data
       (Grafana's $__rate_interval becomes 2m).
    Exit code 0 only when all of it holds. Run it while the pipeline runs (`make demo`).
    """
    from settle import observability as o

    s = settings()
    failures = 0
    active = [t for t in o.targets(s.prometheus_url) if t["labels"].get("job") == job]
    table = Table("target", "process", "health", "promtool check metrics", title="targets")
    for target in sorted(active, key=lambda t: t["labels"].get("process", "")):
        health = target["health"]
        verdict = ""
        if check_metrics and health == "up":
            with urllib.request.urlopen(target["scrapeUrl"], timeout=10) as response:
                ok, said = o.check_metrics_text(response.read().decode())
            verdict = "ok" if ok else f"[red]{said[:200]}[/]"
            failures += not ok
        failures += health != "up"
        table.add_row(target["scrapeUrl"], target["labels"].get("process", ""),
                      health if health == "up" else f"[red]{health}: {target['lastError']}[/]",
                      verdict)
    if not active:
        failures += 1
        console.print(f"[red]no active target in job {job!r}[/] (is the pipeline running?)")
    console.print(table)

    results = o.check_queries(s.prometheus_url, o.all_queries())
    by_source: dict[str, list[o.QueryResult]] = {}
    for r in results:
        by_source.setdefault(r.query.source, []).append(r)
    for source, rows in by_source.items():
        bad = [r for r in rows if not (r.passed if require_data else r.ok)]
        failures += len(bad)
        console.print(f"{'[green]✓[/]' if not bad else '[red]✗[/]'} {source} queries: "
                      f"{len(rows) - len(bad)}/{len(rows)} "
                      f"{'return data' if source == 'dashboard' and require_data else 'parse'}")
        shown = rows if verbose else bad
        if shown:
            t = Table("query", "series", "error", show_lines=False)
            for r in shown:
                t.add_row(r.query.name, str(r.series), r.error or ("" if r.passed else "no data"))
            console.print(t)
    sys.exit(1 if failures else 0)
