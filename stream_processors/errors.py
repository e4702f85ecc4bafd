"""Errors the stateful stages share, with the reason codes their dead letters carry."""

from __future__ import annotations

from settlement.errors import SettleError


class NotCopartitioned(SettleError, ValueError):
    """A record's key or partition disagrees with where its state is kept (a payment_id's join
    state in reconcile, a merchant and currency's batches in settle): the join is broken."""

    reason = "NOT_COPARTITIONED"
