"""`settle refunds`: request refunds of captured payments (one, or a CSV file of them).

Each request is a RefundRequested record on refunds.requested, keyed by payment_id and signed
with the merchant's newest active key (canonical form refund-v1) from the keyring
SETTLE_SIGNING_KEYRING names. The reconcile stage decides it: accepted refunds go to the
payment's channel, rejected ones to refunds.rejected with their reasons.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from producers.refunds import RefundSpec, summarise
from settle.cli.common import console, err_console, settings

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group("refunds")
def refunds() -> None:
    """Refund requests (money back on captured payments), signed with the merchant's key.

    Only a MATCHED payment is refundable, in its own currency, up to what is still
    refundable (captured minus every refund not FAILED). Outcomes appear on refunds.rejected
    and refunds.results.
    """


@refunds.command("request")
@click.argument("payment_id", required=False)
@click.argument("amount", required=False, type=int)
@click.option("--merchant", "merchant_id", default=None,
              help="The payment's merchant (signs the request with its newest active key).")
@click.option("--currency", default=None, help="The payment's currency (ISO 4217, e.g. CNY).")
@click.option("--refund-id", default=None,
              help="Idempotency key within the payment (1-128 of A-Z a-z 0-9 . _ : -); "
                   "default a fresh rf-<uuid>. Re-send a request under the same id to retry it "
                   "safely; another amount under the same id is rejected DUPLICATE_CONFLICT.")
@click.option("--reason", default=None, help="Free text for the records (not signed).")
@click.option("--file", "file", type=_FILE, default=None,
              help="Bulk form: a CSV file with columns payment_id,merchant_id,amount_minor,"
                   "currency[,refund_id,reason] (instead of PAYMENT_ID AMOUNT).")
@click.option("--skip-bad", is_flag=True,
              help="With --file: send the good rows and report the bad ones (default: a file "
                   "with any bad row sends nothing).")
@click.option("--keyring", "keyring_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Keyring file (default SETTLE_SIGNING_KEYRING).")
@click.option("--topic-prefix", default=None,
              help="Prefix every topic name [default: SETTLE_TOPIC_PREFIX].")
@click.option("--dry-run", is_flag=True, help="Check and show what would be sent; send nothing.")
def refunds_request(
    payment_id: str | None, amount: int | None, merchant_id: str | None, currency: str | None,
    refund_id: str | None, reason: str | None, file: Path | None, skip_bad: bool,
    keyring_path: Path | None, topic_prefix: str | None, dry_run: bool,
) -> None:
    """Request a refund of AMOUNT minor units (e.g. 2500 = 25.00 CNY) of PAYMENT_ID.

    \b
      settle refunds request pay-1 2500 --merchant m-0001 --currency CNY --reason "size"
      settle refunds request --file refunds.csv [--skip-bad]

    Every row is checked before anything is sent; a bad row is reported with its line.
    """
    from infra.keyring import configured_keyring, load_keyring
    from infra.registry import registry_client
    from producers.clients import wall_clock_ms
    from producers.errors import RefundFileError
    from producers.order_flow import progress_bar
    from producers.producer import AvroProducer
    from producers.refunds import RefundFile, load_refunds_file, make_spec, publish_refunds
    from producers.signing import RequestSigner
    from schemas.topics import REFUNDS_REQUESTED

    conf = settings()
    if file is not None:
        if payment_id is not None or amount is not None:
            raise click.UsageError("give either PAYMENT_ID AMOUNT or --file, not both")
        refund_file = load_refunds_file(file)
        source = str(file)
    else:
        if payment_id is None or amount is None:
            raise click.UsageError("PAYMENT_ID and AMOUNT are required (or --file FILE)")
        if merchant_id is None or currency is None:
            raise click.UsageError("--merchant and --currency are required with PAYMENT_ID")
        if skip_bad:
            raise click.UsageError("--skip-bad only applies to --file")
        try:
            spec = make_spec(payment_id, merchant_id, amount, currency, refund_id, reason)
        except RefundFileError as exc:
            raise click.ClickException(str(exc)) from None
        refund_file = RefundFile(specs=[(0, spec)])
        source = "the command line"

    keyring = load_keyring(keyring_path) if keyring_path else configured_keyring(conf)
    if keyring is not None:
        for line, spec in list(refund_file.specs):
            if keyring.signing_key_for(spec.merchant_id) is None:
                refund_file.specs.remove((line, spec))
                refund_file.bad_lines.append(line)
                where = f"line {line}: " if line else ""
                refund_file.problems.append(
                    f"{where}no active signing key for merchant {spec.merchant_id} in the "
                    "keyring (`settle keys rotate MERCHANT_ID` creates one)")
    if refund_file.problems:
        if file is None or not skip_bad:
            try:
                refund_file.raise_if_bad()
            except RefundFileError as exc:
                message = str(exc) if file is not None else "; ".join(refund_file.problems)
                raise click.ClickException(message) from None
        for problem in refund_file.problems:
            err_console.print(f"[yellow]skipped[/] {problem}")
    specs = [spec for _line, spec in refund_file.specs]
    if not specs:
        raise click.ClickException(f"no refund to send from {source}")
    if keyring is None:
        err_console.print("[yellow]no keyring (SETTLE_SIGNATURES=off, SETTLE_SIGNING_KEYRING "
                          "unset): requests are sent unsigned[/]")

    prefix = conf.runtime.topic_prefix if topic_prefix is None else topic_prefix
    topic = prefix + REFUNDS_REQUESTED
    if not dry_run:
        signer = RequestSigner(keyring) if keyring is not None else None
        with registry_client(conf) as registry, AvroProducer(
            conf.kafka, registry, client_id="refunds-cli", signer=signer
        ) as producer, progress_bar() as progress:
            task = progress.add_task("refunds", total=len(specs), rate="")
            publish_refunds(producer, specs, wall_clock_ms, topic,
                            on_sent=lambda _s: progress.advance(task))
    console.print(_summary(specs, topic, source, len(refund_file.bad_lines), dry_run))


def _summary(specs: list[RefundSpec], topic: str, source: str, skipped: int,
             dry_run: bool) -> Table:
    verb = "would send" if dry_run else "sent"
    table = Table(title=f"refund requests {verb} to {topic} from {source}")
    if len(specs) <= 20:
        for column in ("refund_id", "payment_id", "merchant", "amount_minor", "currency"):
            table.add_column(column, justify="right" if column == "amount_minor" else "left")
        for spec in specs:
            table.add_row(spec.refund_id, spec.payment_id, spec.merchant_id,
                          str(spec.amount_minor), spec.currency)
        table.caption = f"{len(specs)} {verb}" + (f", {skipped} bad row(s) skipped"
                                                   if skipped else "")
        return table
    table.add_column("currency")
    table.add_column("refunds", justify="right")
    table.add_column("amount_minor", justify="right")
    for currency, entry in sorted(summarise(specs).items()):
        table.add_row(currency, str(entry["refunds"]), str(entry["amount_minor"]))
    table.caption = f"{len(specs)} {verb}" + (f", {skipped} bad row(s) skipped" if skipped
                                               else "")
    return table
