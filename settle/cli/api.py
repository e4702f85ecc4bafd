"""`settle api`: serve the read-only HTTP API, and manage its keys."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click
from rich.table import Table

from settle.cli.common import console, err_console, settings


@click.group("api")
def api() -> None:
    """The read-only HTTP API over the books (payments, balances, batches, exceptions, reports).

    Keys: `settle api keys create --merchant M` (or `--analyst`) prints a key once; clients send
    it as `Authorization: Bearer <key>`. Interactive docs at http://HOST:PORT/docs.
    """


@api.command("serve")
@click.option("--host", default=None, help="Listen address (default SETTLE_API_HOST, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Listen port (default SETTLE_API_PORT, 18000).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve(host: str | None, port: int | None, log_level: str) -> None:
    """Serve the API with uvicorn, as the API's PostgreSQL login (SETTLE_API_PG_USER).

    Refuses to start when that login is a superuser, has BYPASSRLS, owns a table or is not a
    member of settle_api_reader: row-level security would not hold it to a merchant's rows.
    """
    import uvicorn

    from api.app import create_app
    from settle.api_keys import login_problems
    from sinks.db import connect

    s = settings()
    s = replace(s, api=replace(s.api, host=host or s.api.host,
                               port=s.api.port if port is None else port))
    login = s.api.postgres(s.postgres)
    with connect(login) as conn:
        problems = login_problems(conn)
    if problems:
        raise click.ClickException(
            f"refusing to serve as {login.describe()}: " + "; ".join(problems)
            + " (use a login that is only a member of settle_api_reader: `settle db migrate` "
            "creates SETTLE_API_PG_USER)")
    err_console.print(f"API on http://{s.api.host}:{s.api.port} (docs /docs), reading "
                      f"{login.describe()}")
    uvicorn.run(create_app(s), host=s.api.host, port=s.api.port, log_level=log_level,
                proxy_headers=False, server_header=False)


@api.command("screenshot")
@click.argument("url", required=False)
@click.option("--key", required=True,
              help="API key to sign in to the statement page with (sk_...).")
@click.option("--merchant", default=None,
              help="With an analyst key: whose statement (default the first merchant).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("statement.png"), show_default=True, help="PNG to write.")
def screenshot(url: str | None, key: str, merchant: str | None, out: Path) -> None:
    """Render the statement page in headless Chromium and save it as a PNG.

    URL is the API's base URL (default http://SETTLE_API_HOST:SETTLE_API_PORT). Signs in
    through the page's form as a person would; Debian's chromium and chromedriver
    (`bash deploy/stack.sh browser` installs them) are driven through WebDriver.
    """
    from settle.browser import statement_screenshot
    from settle.demo_api import api_url
    from settlement.errors import SettleError

    base = url or api_url(settings())
    try:
        path = statement_screenshot(base, key, out, merchant=merchant)
    except SettleError as exc:
        raise click.ClickException(str(exc)) from exc
    console.print(f"statement page of {base} saved to {path}")


@api.group("keys")
def keys() -> None:
    """API keys: create (shown once), revoke, list. Stored as SHA-256 hashes."""


@keys.command("create")
@click.option("--merchant", default=None, help="A merchant key: it sees this merchant only.")
@click.option("--analyst", is_flag=True, help="An analyst key: it sees every merchant.")
@click.option("--label", default="", help="A note kept with the key (who or what uses it).")
def keys_create(merchant: str | None, analyst: bool, label: str) -> None:
    """Create a key and print it once (alone on stdout; everything else on stderr)."""
    from settle.api_keys import create_key
    from sinks.db import connect

    if analyst == (merchant is not None):
        raise click.UsageError("give exactly one of --merchant M or --analyst")
    with connect(settings().postgres) as conn:
        created = create_key(conn, merchant=merchant, label=label)
    row = created.row
    who = f"merchant {row.merchant_id}" if row.scope == "merchant" else "analyst"
    err_console.print(f"created API key {row.key_id} ({who}); it is shown once, store it now:")
    click.echo(created.key)


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by its id (a running server refuses it within SETTLE_API_KEY_CACHE_S)."""
    from settle.api_keys import revoke_key
    from sinks.db import connect

    with connect(settings().postgres) as conn:
        row = revoke_key(conn, key_id)
    console.print(f"API key {row.key_id} revoked at {row.revoked_at:%Y-%m-%d %H:%M:%S %Z}")


@keys.command("list")
def keys_list() -> None:
    """Every key: id, scope, merchant, label, created, revoked (never the key itself)."""
    from settle.api_keys import list_keys
    from sinks.db import connect

    with connect(settings().postgres) as conn:
        rows = list_keys(conn)
    table = Table(title="API keys")
    table.add_column("key id", no_wrap=True)
    for col in ("scope", "merchant", "label", "created", "by", "revoked"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.key_id, r.scope, r.merchant_id or "", r.label,
                      f"{r.created_at:%Y-%m-%d %H:%M:%S}", r.created_by,
                      f"[red]{r.revoked_at:%Y-%m-%d %H:%M:%S}[/]" if r.revoked_at else "")
    console.print(table)
