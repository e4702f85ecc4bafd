"""Exception-case settings: the approval limits, per currency, and clear refusals."""

from __future__ import annotations

import pytest

from infra.processor_settings import ProcessorConfigError, ProcessorSettings, load


def test_the_default_limits() -> None:
    cases = load({}).cases
    assert cases.approval_above_minor == 1_000_000
    assert dict(cases.approval_above_minor_by_currency) == {"JPY": 100_000, "KWD": 300_000}
    assert cases.limit_for("JPY") == 100_000 and cases.limit_for("CNY") == 1_000_000
    assert cases == ProcessorSettings().cases  # the unset environment and the defaults agree


def test_limits_from_the_environment_and_retention_from_the_reconciler() -> None:
    cases = load({"SETTLE_CASE_APPROVAL_ABOVE_MINOR": "5000",
                  "SETTLE_CASE_APPROVAL_ABOVE_MINOR_BY_CURRENCY": " usd=700 , BHD=30",
                  "SETTLE_RECON_RETAIN_MS": "1234"}).cases
    assert (cases.approval_above_minor, cases.retain_ms) == (5000, 1234)
    assert dict(cases.approval_above_minor_by_currency) == {"USD": 700, "BHD": 30}
    assert dict(load({"SETTLE_CASE_APPROVAL_ABOVE_MINOR_BY_CURRENCY": ""}).cases
                .approval_above_minor_by_currency) == {}


@pytest.mark.parametrize(("env", "message"), [
    ({"SETTLE_CASE_APPROVAL_ABOVE_MINOR": "1e6"}, "SETTLE_CASE_APPROVAL_ABOVE_MINOR='1e6'"),
    ({"SETTLE_CASE_APPROVAL_ABOVE_MINOR": "-1"}, "SETTLE_CASE_APPROVAL_ABOVE_MINOR=-1 must be"),
    ({"SETTLE_CASE_APPROVAL_ABOVE_MINOR_BY_CURRENCY": "JPY"}, "'JPY' is not CURRENCY="),
    ({"SETTLE_CASE_APPROVAL_ABOVE_MINOR_BY_CURRENCY": "YEN=5"}, "'YEN' is not an active"),
    ({"SETTLE_CASE_APPROVAL_ABOVE_MINOR_BY_CURRENCY": "JP=5"}, "'JP' is not an active ISO 4217"),
    ({"SETTLE_CASE_APPROVAL_ABOVE_MINOR_BY_CURRENCY": "JPY=1.5"}, "'1.5' \\(for JPY\\)"),
    ({"SETTLE_CASE_APPROVAL_ABOVE_MINOR_BY_CURRENCY": "JPY=-1"}, "JPY=-1 must be >= 0"),
])
def test_malformed_limits_name_their_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ProcessorConfigError, match=message):
        load(env)
