"""`settle worker STAGE`: run one stage of the faust pipeline in the foreground."""

from __future__ import annotations

import logging

import click

from settle.cli.common import settings

STAGES = ("validate", "reconcile", "settle")
EVENT_LOOPS = ("uvloop", "asyncio")


def use_event_loop(name: str) -> str:
    """Install the worker's event loop (SETTLE_EVENT_LOOP); returns the one in use.

    `asyncio` (the default) is the standard loop; `uvloop` swaps in libuv's. Measured side
    by side here (`settle bench stages --quick`, two runs each), uvloop gained nothing: the
    workers' time is Python per record, not the loop's socket work. Must run before faust
    creates its loop.
    """
    name = name.strip().lower() or "asyncio"
    if name not in EVENT_LOOPS:
        raise click.BadParameter(f"SETTLE_EVENT_LOOP={name!r}: expected one of "
                                 f"{', '.join(EVENT_LOOPS)}")
    if name == "uvloop":
        try:
            import mode.loop

            mode.loop.use("uvloop")
        except ImportError:  # not installed on this platform: the standard loop
            return "asyncio (uvloop is not installed)"
    return name


@click.command("worker")
@click.argument("stage", type=click.Choice(STAGES))
@click.option("--loglevel", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--metrics-port", type=int, default=None,
              help="Serve Prometheus /metrics on this port (default SETTLE_METRICS_PORT, 0=off).")
def worker(stage: str, loglevel: str, metrics_port: int | None) -> None:
    """Run a stream-processing STAGE as a faust worker until interrupted.

    
    validate:  payments.requested -> payments.routed.<channel> | payments.rejected | payments.dlq
    reconcile: payments.routed.* + channel.confirmations -> reconciliation.results
    settle:    reconciliation.results (MATCHED) -> settlements.batches, by merchant and window
    Run several workers of one stage to share its partitions (one consumer group per stage).
    validate checks merchant signatures (SETTLE_SIGNATURES=required, the default, needs
    SETTLE_SIGNING_KEYRING and refuses to start without it; off skips the check).
    """
    import faust

    from infra import gc_tuning
    from infra.registry import registry_client
    from stream_processors import metrics
    from stream_processors.app import make_validate_app
    from stream_processors.stages import make_reconcile_app, make_settle_app

    s = settings()  # a malformed setting stops the worker before it starts
    loop_name = use_event_loop(s.runtime.event_loop)
    gc_settings = s.runtime.gc
    ps = s.processor
    port = s.metrics_port if metrics_port is None else metrics_port
    metrics.serve(port, s.runtime.metrics_addr)
    registry = registry_client(s)
    factories = {
        "validate": make_validate_app,
        "reconcile": make_reconcile_app,
        "settle": make_settle_app,
    }
    app = factories[stage](s, ps, registry)
    if stage == "validate":
        # Said before faust takes over the terminal, so it is the first line of the log.
        click.echo(f"validate: {app.settle_signature_mode}", err=True)  # type: ignore[attr-defined]
    click.echo(f"{stage}: event loop {loop_name}", err=True)
    level = getattr(logging, loglevel.upper())

    @app.task
    async def set_log_levels() -> None:
        # mode leaves the root logger at DEBUG and filters in the handlers, so every
        # aiokafka debug call still builds a record: profiled at ~10% of a worker's CPU.
        logging.getLogger().setLevel(level)
        # One line per registry request drowns the worker's own log.
        logging.getLogger("httpx").setLevel(max(level, logging.WARNING))

    # Last, so the freeze takes every object the app and its libraries made at start-up.
    click.echo(f"{stage}: {gc_tuning.apply(gc_settings)}", err=True)
    faust.Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
