"""Every PromQL expression the project ships (rules, dashboard), checked against Prometheus.

`settle prom check` and the live test use this: each expression is sent to Prometheus's
HTTP API; a rule must parse, a dashboard panel must also return data.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from infra.config import REPO_ROOT

RULES_DIR = REPO_ROOT / "deploy" / "prometheus" / "rules"
RULE_TESTS_DIR = REPO_ROOT / "deploy" / "prometheus" / "tests"
DASHBOARDS_DIR = REPO_ROOT / "deploy" / "grafana" / "dashboards"
# Grafana's built-in interval variables, replaced by a window wide enough for a 5 s scrape.
GRAFANA_VARIABLES = {"$__rate_interval": "2m", "$__interval": "1m", "$__range": "15m"}


@dataclass(frozen=True, slots=True)
class Query:
    source: str  # "rule" or "dashboard"
    name: str  # the rule's record/alert name, or "<dashboard> / <panel> [refId]"
    expr: str
    needs_data: bool


@dataclass(frozen=True, slots=True)
class QueryResult:
    query: Query
    ok: bool  # parsed and evaluated (HTTP status success)
    series: int  # series (or 1 for a scalar) in the result
    error: str = ""

    @property
    def passed(self) -> bool:
        return self.ok and (self.series > 0 or not self.query.needs_data)


def rule_queries(rules_dir: Path = RULES_DIR) -> list[Query]:
    out: list[Query] = []
    for path in sorted(rules_dir.glob("*.yml")):
        doc = yaml.safe_load(path.read_text()) or {}
        for group in doc.get("groups", []):
            for rule in group.get("rules", []):
                name = rule.get("alert") or rule.get("record")
                out.append(Query("rule", f"{path.name}: {name}", str(rule["expr"]).strip(),
                                 needs_data=False))
    return out


def substitute(expr: str) -> str:
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value).replace("${" + var[1:] + "}", value)
    leftover = re.findall(r"\$\{?\w+", expr)
    if leftover:
        raise ValueError(f"dashboard expression uses unknown variables {leftover}: {expr}")
    return expr


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in panels:
        out.append(panel)
        out.extend(_panels(panel.get("panels", [])))  # panels inside collapsed rows
    return out


def dashboard_queries(dashboards_dir: Path = DASHBOARDS_DIR) -> list[Query]:
    out: list[Query] = []
    for path in sorted(dashboards_dir.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in _panels(board.get("panels", [])):
            for target in panel.get("targets", []):
                expr = target.get("expr")
                if not expr:
                    continue
                name = f"{board.get('title', path.stem)} / {panel.get('title', '?')} " \
                       f"[{target.get('refId', '?')}]"
                out.append(Query("dashboard", name, substitute(str(expr)), needs_data=True))
    return out


def all_queries() -> list[Query]:
    return [*rule_queries(), *dashboard_queries()]


def run_query(prometheus_url: str, query: Query, timeout_s: float = 10.0) -> QueryResult:
    url = f"{prometheus_url.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode(
        {"query": query.expr, "time": f"{time.time():.3f}"})
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:  # 400/422: the expression does not parse/evaluate
        try:
            body = json.loads(exc.read())
        except ValueError:
            return QueryResult(query, False, 0, f"HTTP {exc.code}")
    except (OSError, ValueError) as exc:
        return QueryResult(query, False, 0, f"{type(exc).__name__}: {exc}")
    if body.get("status") != "success":
        return QueryResult(query, False, 0, f"{body.get('errorType')}: {body.get('error')}")
    data = body["data"]
    if data["resultType"] in ("scalar", "string"):
        value = float(data["result"][1]) if data["resultType"] == "scalar" else 0.0
        return QueryResult(query, True, 0 if math.isnan(value) else 1)
    return QueryResult(query, True, len(data["result"]))


def check_queries(prometheus_url: str, queries: list[Query]) -> list[QueryResult]:
    return [run_query(prometheus_url, q) for q in queries]


def targets(prometheus_url: str) -> list[dict[str, Any]]:
    """Prometheus's active targets: labels, health, last error."""
    url = f"{prometheus_url.rstrip('/')}/api/v1/targets?state=active"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.loads(response.read())
    return list(body["data"]["activeTargets"])


def promtool() -> str:
    """The promtool binary installed with Prometheus by deploy/stack.sh."""
    for candidate in ("promtool", "/usr/bin/promtool"):
        try:
            subprocess.run([candidate, "--version"], capture_output=True, check=True)
            return candidate
        except (OSError, subprocess.CalledProcessError):
            continue
    raise FileNotFoundError("promtool not found: `make up` installs Prometheus (with promtool)")


def check_metrics_text(text: str) -> tuple[bool, str]:
    """`promtool check metrics` on one /metrics page: (ok, what it said)."""
    proc = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True,
                          text=True, check=False)
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()
