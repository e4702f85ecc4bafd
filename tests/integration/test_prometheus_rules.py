"""Prometheus rules: promtool checks and unit tests, and the promises around them.

promtool comes with the Debian prometheus package that `make up` installs; these tests
fail (never skip) without it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from infra.config import REPO_ROOT
from settle.observability import RULE_TESTS_DIR, RULES_DIR, promtool, rule_queries

# Where a rule's annotation may send the reader for its runbook.
RUNBOOK_DOCS = {"README": REPO_ROOT / "README.md",
                "docs/operations.md": REPO_ROOT / "docs" / "operations.md"}
SOURCE_DIRS = ("settle", "stream_processors", "sinks", "producers", "api")


def _rules() -> list[dict[str, object]]:
    out = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            out.extend(group["rules"])
    return out


def _alerts() -> list[str]:
    return [str(r["alert"]) for r in _rules() if "alert" in r]


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True,
                          check=False, cwd=REPO_ROOT)


def test_rule_files_pass_promtool_check() -> None:
    files = sorted(RULES_DIR.glob("*.yml"))
    assert files, f"no rule files in {RULES_DIR}"
    proc = _run("check", "rules", *files)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rule_unit_tests_pass() -> None:
    files = sorted(RULE_TESTS_DIR.glob("*.yml"))
    assert files, f"no rule tests in {RULE_TESTS_DIR}"
    proc = _run("test", "rules", *files)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_the_issue_s_alerts_exist() -> None:
    alerts = set(_alerts())
    for wanted in ("SettleConsumerLagGrowing", "SettleDeadLetters", "SettleRejectionRateSpike",
                   "SettleReconciliationBacklogOverSLA", "SettleChannelDeclineRateSpike",
                   "SettleNoThroughput", "SettleBooksOutOfBalance", "SettleTargetDown",
                   "SettleRoutedPaymentUndecided", "SettleRefundOverCapture",
                   "SettleRefundRateSpike", "SettlePayableMismatch", "SettlePayoutDueMismatch",
                   "SettleDisputeDeadlineSoon", "SettleDisputeHoldMismatch", "SettleCasesAging",
                   "SettleCaseApprovalWaiting", "SettleApiErrors", "SettleApiSlow"):
        assert wanted in alerts, wanted


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in sorted(RULE_TESTS_DIR.glob("*.yml")):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = set(_alerts())
    assert alerts - firing == set(), f"never tested firing: {sorted(alerts - firing)}"
    assert alerts - quiet == set(), f"never tested quiet: {sorted(alerts - quiet)}"


def test_every_alert_has_a_runbook_and_a_severity() -> None:
    texts = {doc: path.read_text() for doc, path in RUNBOOK_DOCS.items()}
    for rule in _rules():
        if "alert" not in rule:
            continue
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("page", "ticket"), name  # type: ignore[index]
        annotations = " ".join(str(rule["annotations"]).split())
        docs = [doc for doc in texts if f"Runbook: {doc}, {name}" in annotations]
        assert len(docs) == 1, f"{name}: no 'Runbook: <document>, {name}' annotation"
        assert re.search(rf"^#+ .*\b{name}\b", texts[docs[0]], re.M), \
            f"{docs[0]} has no runbook for {name}"


def test_every_metric_the_rules_read_is_exported_by_the_code() -> None:
    source = "\n".join(p.read_text() for d in SOURCE_DIRS
                       for p in (REPO_ROOT / d).rglob("*.py"))
    missing = set()
    for query in rule_queries():
        for name in re.findall(r"\b(settle_[a-z0-9_]+)", query.expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if f'"{base}"' not in source:
                missing.add(base)
    assert not missing, f"rules read metrics no process exports: {sorted(missing)}"
