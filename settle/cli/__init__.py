"""The `settle` command line: one entry point, a subcommand per job."""

from __future__ import annotations

import click

from producers.cli import merchants, simulate
from settle.cli.api import api
from settle.cli.audit import audit
from settle.cli.bench import bench
from settle.cli.cases import cases
from settle.cli.chaos import chaos
from settle.cli.common import fail_on_settle_error
from settle.cli.demo import demo
from settle.cli.infra import config_cmd, db, schemas_cmd, smoke, stack, topics
from settle.cli.keys import keys
from settle.cli.monitor import monitor
from settle.cli.prom import prom
from settle.cli.refunds import refunds
from settle.cli.report import report
from settle.cli.sinks import sink
from settle.cli.workers import worker


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="settle-pipeline")
def cli() -> None:
    """Streaming settlement pipeline: ingest, route, reconcile, post and settle payments.

    Every address and credential comes from SETTLE_* environment settings; the defaults
    point at the local stack started by `make up` (see `settle config`).
    """


COMMANDS = (stack, topics, schemas_cmd, db, config_cmd, smoke, worker, audit, merchants, simulate,
            bench, sink, demo, monitor, prom, keys, chaos, refunds, cases, api, report)
for command in COMMANDS:
    cli.add_command(command)


def main() -> None:
    with fail_on_settle_error():
        cli(prog_name="settle")


if __name__ == "__main__":
    main()
