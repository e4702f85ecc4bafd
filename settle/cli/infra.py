"""Commands for the plumbing: the local stack, topics, schemas, migrations, settings, smoke test."""

from __future__ import annotations

import os
import subprocess
import sys

import click
from rich.table import Table

from infra import config
from settle.cli.common import console, settings

STACK_SCRIPT = config.REPO_ROOT / "deploy" / "stack.sh"


@click.command(
    "stack",
    context_settings={"ignore_unknown_options": True},
    help="Start, stop or inspect the local stack (Kafka, registry, PostgreSQL, Prometheus).\n\n"
    "ACTION is one of up, down, status, logs SERVICE, clean.",
)
@click.argument("action", type=click.Choice(["up", "down", "status", "logs", "clean"]))
@click.argument("rest", nargs=-1, type=click.UNPROCESSED)
def stack(action: str, rest: tuple[str, ...]) -> None:
    proc = subprocess.run(["bash", str(STACK_SCRIPT), action, *rest], check=False)
    sys.exit(proc.returncode)


@click.group("topics")
def topics() -> None:
    """Create and inspect the pipeline's Kafka topics."""


@topics.command("create")
@click.option("--partitions", type=int, default=None, help="Override SETTLE_TOPIC_PARTITIONS.")
def topics_create(partitions: int | None) -> None:
    """Create every topic of the contract that is missing (idempotent)."""
    from dataclasses import replace

    from infra.admin import create_topics

    kafka = settings().kafka
    if partitions is not None:
        kafka = replace(kafka, partitions=partitions)
    outcomes = create_topics(kafka)
    table = Table(title=f"topics on {kafka.bootstrap_servers}")
    for col in ("topic", "partitions", "action", "detail"):
        table.add_column(col)
    for o in outcomes:
        style = {"created": "green", "exists": "", "mismatch": "bold red"}[o.action]
        table.add_row(o.name, str(o.partitions), f"[{style}]{o.action}[/]" if style else o.action,
                      o.detail)
    console.print(table)
    if any(o.action == "mismatch" for o in outcomes):
        raise click.ClickException("some topics do not match the contract (see above)")


@topics.command("list")
def topics_list() -> None:
    """Show the contract's topics as the broker sees them."""
    from infra.admin import admin_client, describe_configs
    from schemas.topics import CONTRACT

    kafka = settings().kafka
    meta = admin_client(kafka).list_topics(timeout=15).topics
    table = Table(title=f"topics on {kafka.bootstrap_servers}")
    for col in ("topic", "partitions", "cleanup.policy", "retention.ms"):
        table.add_column(col)
    for spec in CONTRACT:
        if spec.name not in meta:
            table.add_row(spec.name, "[red]missing[/]", "", "")
            continue
        conf = describe_configs(kafka, spec.name)
        table.add_row(spec.name, str(len(meta[spec.name].partitions)),
                      conf.get("cleanup.policy", "?"), conf.get("retention.ms", "?"))
    console.print(table)


@click.group("schemas")
def schemas_cmd() -> None:
    """Register and inspect the Avro contract in the schema registry."""


@schemas_cmd.command("register")
def schemas_register() -> None:
    """Register every topic's value schema (TopicNameStrategy, BACKWARD); idempotent."""
    from infra.registry import registry_client
    from schemas.registry import register_all

    client = registry_client(settings())
    ids = register_all(client)
    table = Table(title=f"subjects on {config.safe_url(settings().registry.url)}")
    table.add_column("subject")
    table.add_column("schema id", justify="right")
    for subject, schema_id in sorted(ids.items()):
        table.add_row(subject, str(schema_id))
    console.print(table)


@schemas_cmd.command("list")
def schemas_list() -> None:
    """List the registry's subjects."""
    from infra.registry import registry_client

    client = registry_client(settings())
    for subject in sorted(client.subjects()):
        console.print(subject)


@click.group("db")
def db() -> None:
    """PostgreSQL migrations."""


@db.command("migrate")
def db_migrate() -> None:
    """Apply pending migrations (idempotent; recorded in schema_migrations).

    Then creates or updates the API's login (SETTLE_API_PG_USER: LOGIN, a member of
    settle_api_reader, no superuser or BYPASSRLS) when the migrating role may create roles.
    """
    from settle.api_keys import ensure_api_login
    from sinks.db import connect
    from sinks.migrate import migrate

    s = settings()
    pg = s.postgres
    with connect(pg) as conn:
        outcomes = migrate(conn)
        conn.autocommit = False
        login = ensure_api_login(conn, s.api)
    table = Table(title=f"migrations on {pg.describe()}")
    for col in ("version", "name", "action"):
        table.add_column(col)
    for o in outcomes:
        table.add_row(f"{o.version:04d}", o.name,
                      f"[green]{o.action}[/]" if o.action == "applied" else o.action)
    console.print(table)
    console.print(f"API login {s.api.pg_user}: {login}")


@click.command("config")
def config_cmd() -> None:
    """Show the effective settings (secrets masked) and where each comes from."""
    table = Table(title="settings (SETTLE_* environment, defaults otherwise)")
    table.add_column("setting")
    table.add_column("value")
    for key, value in settings().masked().items():
        table.add_row(key, str(value))
    console.print(table)
    overridden = sorted(k for k in os.environ if k.startswith(config.ENV_PREFIX))
    if overridden:
        console.print("from the environment: " + ", ".join(overridden))


@click.command("smoke")
@click.option("--timeout", "timeout_s", type=float, default=30.0, show_default=True,
              help="Seconds to wait for the payment to come back.")
def smoke(timeout_s: float) -> None:
    """Prove the stack: produce one payment idempotently, read it back, decode it."""
    from settle.smoke import run_smoke

    result = run_smoke(settings(), timeout_s=timeout_s)
    console.print(result.summary())
