"""Errors raised by the producer library and the simulators."""

from __future__ import annotations

from typing import Any

from settlement.errors import SettleError


class ProducerError(SettleError):
    """A record could not be published."""


class DeliveryFailed(ProducerError):
    """The broker did not accept one or more records; ``reports`` lists them."""

    def __init__(self, message: str, reports: list[Any] | None = None) -> None:
        super().__init__(message)
        self.reports = reports or []


class StillQueued(DeliveryFailed):
    """``flush`` timed out with ``undelivered`` records still queued (none refused yet): the
    broker may be away. They stay queued and may still be delivered."""

    def __init__(self, message: str, undelivered: int) -> None:
        super().__init__(message)
        self.undelivered = undelivered


class ProducerClosed(ProducerError):
    """``send`` was called after ``close``."""


class MerchantFileError(ProducerError):
    """A merchants file is unreadable or has invalid rows; ``problems`` names each by line."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class RefundFileError(ProducerError):
    """A refunds file or refund request is invalid; ``problems`` names each by line."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class SimulatorConfigError(ProducerError):
    """A simulator was given settings no run can satisfy (ratios above 1, no merchants...)."""


class ReadBackIncomplete(ProducerError):
    """Reading a topic up to its end offsets did not finish within the timeout."""
