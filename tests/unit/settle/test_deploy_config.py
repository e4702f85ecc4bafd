"""Deployment files hold together: compose.yaml, its Prometheus config, Grafana provisioning
and the generated dashboard (structure and metric names; no Docker or Grafana needed)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
PROM_COMPOSE = DEPLOY / "prometheus" / "prometheus.compose.yml"
PROM_TEMPLATE = DEPLOY / "prometheus" / "prometheus.yml.in"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "settle-pipeline.json"

ROWS = ["Overview", "Ingest", "Channels", "Reconciliation", "Refunds", "Disputes and cases",
        "Ledger and settlement", "Sinks", "Lag", "API"]

# The metric families of the pipeline (the metrics brief of issue #5), by type: a histogram
# is queried through its _bucket, _sum and _count series.
COUNTERS = {
    "settle_stage_records_total", "settle_rejections_total", "settle_dead_letters_total",
    "settle_routed_total", "settle_registry_retries_total",
    "settle_reconciliation_outcomes_total", "settle_batches_closed_total",
    "settle_batch_amounts_closed_minor_total", "settle_batch_items_total",
    "settle_tick_errors_total", "settle_sink_records_total", "settle_sink_dead_letters_total",
    "settle_sink_retries_total", "settle_ledger_postings_total",
    "settle_producer_records_total", "settle_simulator_orders_total",
    "settle_channel_confirmations_total", "settle_monitor_errors_total",
    "settle_refund_requests_total", "settle_refund_rejections_total",
    "settle_refund_outcomes_total", "settle_refund_over_capture_attempts_total",
    "settle_dispute_results_total", "settle_dispute_rejections_total",
    "settle_api_requests_total", "process_cpu_seconds_total",
}
GAUGES = {
    "settle_merchants_known", "settle_dedup_entries", "settle_reconciliation_unmatched",
    "settle_reconciliation_unmatched_oldest_age_seconds", "settle_reconciliation_states",
    "settle_open_batches", "settle_consumer_lag_records", "settle_topic_end_offset",
    "settle_books_balanced", "settle_books_check_timestamp_seconds",
    "settle_disputes_open", "settle_disputes_open_by_deadline",
    "settle_disputes_respond_by_soonest_seconds", "settle_disputes_held_minor",
    "settle_cases_open", "settle_cases_open_oldest_age_seconds",
    "settle_cases_awaiting_approval", "settle_cases_awaiting_approval_oldest_age_seconds",
    "process_resident_memory_bytes", "up",
}
HISTOGRAMS = {
    "settle_reconciliation_time_to_match_seconds", "settle_sink_batch_rows",
    "settle_sink_commit_duration_seconds", "settle_e2e_latency_seconds",
    "settle_event_loop_lag_seconds", "settle_gc_pause_seconds", "settle_stage_commit_seconds",
    "settle_api_request_duration_seconds",
}
KNOWN_SERIES = COUNTERS | GAUGES | {
    f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")
}
# `process` label of the pipeline's scrape targets (orders is a finite run, not scraped).
PROCESSES = {"validate", "reconcile", "settle", "ledger-sink", "settlement-sink", "channels",
             "monitor", "api"}

_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
                 "or", "unless", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords,
    label names or label values."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    s = re.sub(r"\{[^}]*\}", "", s)  # matchers
    s = re.sub(r"\[[^\]]*\]", "", s)  # ranges
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = re.findall(r"(?<![\w.:])([A-Za-z_:][\w:]*+)(?!\s*\()", s)
    return {n for n in names if n.lower() not in _PROMQL_WORDS}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_dashboard", GRAFANA / "build_dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)  # as the live test loads it: no package
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    return _load_generator()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _all_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in panels:
        out.append(panel)
        out.extend(_all_panels(panel.get("panels", [])))
    return out


def _targets(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in _all_panels(dashboard["panels"]) for t in p.get("targets", [])]


# --------------------------------------------------------------------------- dashboard


def test_committed_dashboard_is_the_generators_output(generator: ModuleType) -> None:
    assert DASHBOARD.read_text(encoding="utf-8") == generator.render(), (
        "deploy/grafana/dashboards/settle-pipeline.json is stale: "
        "run python deploy/grafana/build_dashboard.py"
    )


def test_generator_is_deterministic(generator: ModuleType) -> None:
    assert generator.render() == generator.render()


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "settle-pipeline"
    assert 39 <= dashboard["schemaVersion"] <= 41
    assert dashboard["templating"]["list"] == []  # no variables but $__rate_interval


def test_rows_in_order(dashboard: dict[str, Any]) -> None:
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ROWS


def test_every_row_has_panels_and_they_follow_their_row(dashboard: dict[str, Any]) -> None:
    counts: dict[str, int] = {}
    current = None
    last_y = -1
    for panel in dashboard["panels"]:
        assert panel["gridPos"]["y"] >= last_y, f"{panel['title']} is above the previous panel"
        last_y = panel["gridPos"]["y"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            current = panel["title"]
            counts[current] = 0
        else:
            assert current is not None, f"{panel['title']} is before the first row"
            counts[current] += 1
    assert all(counts[row] >= 3 for row in ROWS), counts


def test_panel_ids_are_unique(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in _all_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))


def test_every_target_has_expr_legend_and_the_prometheus_datasource(
    dashboard: dict[str, Any],
) -> None:
    targets = _targets(dashboard)
    assert len(targets) >= 40
    for title, target in targets:
        assert target.get("expr", "").strip(), title
        assert target.get("legendFormat", "").strip(), title
        assert target["datasource"] == {"type": "prometheus", "uid": "prometheus"}, title
    for panel in _all_panels(dashboard["panels"]):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "prometheus", panel["title"]


def test_only_the_built_in_rate_interval_variable(dashboard: dict[str, Any]) -> None:
    for title, target in _targets(dashboard):
        leftover = target["expr"].replace("$__rate_interval", "")
        assert "$" not in leftover, f"{title}: {target['expr']}"


def test_exprs_use_only_known_metric_families(dashboard: dict[str, Any]) -> None:
    used: set[str] = set()
    for title, target in _targets(dashboard):
        names = metric_names(target["expr"])
        assert names, f"{title}: no metric in {target['expr']}"
        unknown = names - KNOWN_SERIES
        assert not unknown, f"{title}: unknown metrics {unknown} in {target['expr']}"
        used |= names
    # every family an SRE asked for is on the dashboard
    for family in ("settle_consumer_lag_records", "settle_topic_end_offset",
                   "settle_books_balanced", "settle_e2e_latency_seconds_bucket",
                   "settle_reconciliation_time_to_match_seconds_bucket",
                   "settle_sink_commit_duration_seconds_bucket", "settle_rejections_total",
                   "process_cpu_seconds_total", "process_resident_memory_bytes", "up"):
        assert family in used, family


def test_no_payment_or_merchant_ids_in_queries(dashboard: dict[str, Any]) -> None:
    for title, target in _targets(dashboard):
        assert not re.search(r"payment_id|merchant_id|pay-\d", target["expr"]), title


def test_the_metric_name_extractor_sees_through_promql() -> None:
    expr = ('sum by (channel) (rate(settle_routed_total{channel="card",rule=~"a.*"}[1m])) '
            '/ ignoring (channel) group_left sum(rate(bogus_metric[5m]))')
    assert metric_names(expr) == {"settle_routed_total", "bogus_metric"}
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(x_bucket[1m])))") == {
        "x_bucket"}
    assert metric_names('time() - max(settle_books_check_timestamp_seconds)') == {
        "settle_books_check_timestamp_seconds"}


def test_dashboard_queries_substitutes_the_rate_interval(
    generator: ModuleType, dashboard: dict[str, Any],
) -> None:
    queries = generator.dashboard_queries(DASHBOARD)
    assert len(queries) == len(_targets(dashboard))
    assert all("$" not in expr for _, expr in queries)
    assert any("[1m]" in expr for _, expr in queries)
    assert all(title for title, _ in queries)


# --------------------------------------------------------------------------- compose


def _bind_sources(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of every bind mount (short or long syntax)."""
    out = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            target = rest.split(":")[0]
            if source.startswith((".", "/")):
                out.append((source, target))
        elif volume.get("type") == "bind":
            out.append((volume["source"], volume["target"]))
    return out


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def test_every_service_has_an_image_or_a_build(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert service.get("image") or service.get("build"), name


def test_the_build_context_and_dockerfile_exist(services: dict[str, dict[str, Any]]) -> None:
    built = [s for s in services.values() if "build" in s]
    assert built
    for service in built:
        context = (DEPLOY / service["build"]["context"]).resolve()
        assert context == REPO
        dockerfile = context / service["build"]["dockerfile"]
        assert dockerfile.is_file(), dockerfile
        text = dockerfile.read_text(encoding="utf-8")
        assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
        for line in re.findall(r"^COPY (.+)$", text, re.M):
            for source in line.split()[:-1]:
                assert (context / source).exists(), f"COPY {source}: not in the repo"


def test_every_bind_mounted_host_path_exists(services: dict[str, dict[str, Any]]) -> None:
    binds = [(name, src) for name, s in services.items() for src, _ in _bind_sources(s)]
    assert len(binds) >= 5
    for name, source in binds:
        assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"


def test_every_depends_on_target_exists(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for dep, condition in _depends_on(service).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert condition in {"service_started", "service_healthy",
                                 "service_completed_successfully"}
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{dep} has no healthcheck"


def test_infrastructure_has_healthchecks_and_init_waits_for_them(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in ("kafka", "registry", "postgres"):
        assert services[name]["healthcheck"]["test"], name
    assert _depends_on(services["init"]) == {
        "kafka": "service_healthy", "registry": "service_healthy",
        "postgres": "service_healthy"}
    command = " ".join(services["init"]["command"])
    assert re.search(r"settle topics create && settle schemas register && settle db migrate",
                     command)


def test_pipeline_processes_start_after_init(services: dict[str, dict[str, Any]]) -> None:
    commands = {
        "validate": ["settle", "worker", "validate"],
        "reconcile": ["settle", "worker", "reconcile"],
        "settle": ["settle", "worker", "settle"],
        "ledger-sink": ["settle", "sink", "ledger"],
        "settlement-sink": ["settle", "sink", "settlement"],
        "monitor": ["settle", "monitor"],
        "channels": ["settle", "simulate", "channels"],
        "api": ["settle", "api", "serve"],
    }
    for name, command in commands.items():
        assert services[name]["command"] == command, name
        assert _depends_on(services[name]) == {"init": "service_completed_successfully"}, name


def test_the_api_listens_on_its_published_port_with_the_login_init_creates(
    services: dict[str, dict[str, Any]],
) -> None:
    env = services["api"]["environment"]
    assert env["SETTLE_API_HOST"] == "0.0.0.0"  # Prometheus and the host reach it from outside
    (published,) = services["api"]["ports"]
    assert published.endswith(f":{env['SETTLE_API_PORT']}")
    assert published.startswith("127.0.0.1:${SETTLE_API_PORT:-18000}:")
    # init's `settle db migrate` sets the login's password the api container logs in with
    assert services["init"]["environment"]["SETTLE_API_PG_PASSWORD"] == env[
        "SETTLE_API_PG_PASSWORD"]
    assert env["SETTLE_PG_HOST"] == "postgres"


def test_kafka_is_a_single_kraft_node_with_project_settings(
    services: dict[str, dict[str, Any]],
) -> None:
    kafka = services["kafka"]
    assert kafka["image"] == "apache/kafka:4.1.1"
    env = {k: str(v) for k, v in kafka["environment"].items()}
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    factors = [k for k in env if k.endswith("REPLICATION_FACTOR")]
    assert len(factors) >= 3 and all(env[k] == "1" for k in factors)
    assert services["registry"]["image"] == "apicurio/apicurio-registry:3.3.3"
    assert services["postgres"]["image"].startswith("postgres:16")


def test_pipeline_settings_point_at_compose_services(services: dict[str, dict[str, Any]]) -> None:
    env = services["validate"]["environment"]
    host, _, port = env["SETTLE_KAFKA_BOOTSTRAP"].partition(":")
    assert host in services and port == "9092"
    assert env["SETTLE_REGISTRY_URL"].startswith("http://registry:8080/")
    assert env["SETTLE_PG_HOST"] in services
    assert env["SETTLE_PROMETHEUS_URL"].startswith("http://prometheus:")
    assert int(env["SETTLE_METRICS_PORT"]) > 0


def test_published_ports_are_on_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    published = [(n, p) for n, s in services.items() for p in s.get("ports", [])]
    assert len(published) >= 5
    for name, port in published:
        if isinstance(port, dict):
            assert port.get("host_ip") == "127.0.0.1", name
        else:
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


# --------------------------------------------------------------------------- prometheus


def _mount_target(service: dict[str, Any], host_path: Path) -> str:
    for source, target in _bind_sources(service):
        if (DEPLOY / source).resolve() == host_path.resolve():
            return target
    raise AssertionError(f"{host_path} is not mounted")


def test_prometheus_compose_config_keeps_the_job_names(services: dict[str, Any]) -> None:
    config = load_yaml(PROM_COMPOSE)
    jobs = [job["job_name"] for job in config["scrape_configs"]]
    template_jobs = re.findall(r"job_name:\s*(\S+)", PROM_TEMPLATE.read_text(encoding="utf-8"))
    assert jobs == template_jobs
    prometheus = services["prometheus"]
    config_target = _mount_target(prometheus, PROM_COMPOSE)
    assert f"--config.file={config_target}" in prometheus["command"]
    rules_target = _mount_target(prometheus, DEPLOY / "prometheus" / "rules")
    assert config["rule_files"] == [f"{rules_target}/*.yml"]


def test_prometheus_scrapes_every_pipeline_service_on_its_metrics_port(
    services: dict[str, dict[str, Any]],
) -> None:
    config = load_yaml(PROM_COMPOSE)
    settle_job = next(job for job in config["scrape_configs"] if job["job_name"] == "settle")
    seen = set()
    for static in settle_job["static_configs"]:
        process = static["labels"]["process"]
        for target in static["targets"]:
            host, _, port = target.partition(":")
            assert host in services, f"{target}: no such compose service"
            assert host == process
            env = services[host].get("environment", {})
            # The API serves /metrics on its HTTP port, the others on SETTLE_METRICS_PORT.
            port_setting = "SETTLE_API_PORT" if process == "api" else "SETTLE_METRICS_PORT"
            assert str(env.get(port_setting)) == port, target
            seen.add(process)
    assert seen == PROCESSES
    for job in config["scrape_configs"]:
        if job["job_name"] == "schema-registry":
            for static in job["static_configs"]:
                assert all(t.split(":")[0] in services for t in static["targets"])


# --------------------------------------------------------------------------- grafana


def test_grafana_provisioning_matches_the_dashboard_and_compose(
    services: dict[str, dict[str, Any]],
) -> None:
    grafana = services["grafana"]
    datasources = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    (source,) = datasources["datasources"]
    assert source["uid"] == "prometheus" and source["type"] == "prometheus"
    variable = re.fullmatch(r"\$\{?(\w+)\}?", source["url"])
    assert variable, "the datasource url comes from the environment"
    assert grafana["environment"][variable.group(1)].startswith("http://prometheus:9090")

    providers = load_yaml(GRAFANA / "provisioning" / "dashboards" / "settle.yml")
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == _mount_target(grafana, GRAFANA / "dashboards")
    for folder in ("datasources", "dashboards"):
        assert _mount_target(grafana, GRAFANA / "provisioning" / folder) == (
            f"/etc/grafana/provisioning/{folder}")
