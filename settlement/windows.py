"""Settlement windows: fixed-size epoch-aligned intervals with a grace period before closing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from settlement.errors import DomainError

MS_PER_SECOND = 1_000
SECONDS_PER_DAY = 86_400

# Midnight 1970-01-01 in Asia/Shanghai as epoch ms, i.e.
#   int(datetime(1970, 1, 1, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp() * 1000)
# It is a constant rather than a zoneinfo call because China has kept UTC+08:00 with no
# daylight saving since 1991, so every local midnight since then is this origin plus a whole
# number of days; and a constant needs no tzdata on the host. (tzdata's 1970 offset for
# Shanghai is also +08:00, which the unit tests check.) For a zone with DST, fixed-size
# windows cannot express "local midnight"; that would need a calendar-based window_for.
SHANGHAI_MIDNIGHT_ORIGIN_MS = -8 * 3_600 * MS_PER_SECOND  # -28_800_000

DEFAULT_GRACE_SECONDS = 600

# assign_window skips windows the caller has closed; this bounds the walk so a caller whose
# `closed` says yes to everything gets an error instead of a hang.
WINDOW_SKIPS_MAX = 10_000

BATCH_ID_PREFIX = "B:"


class WindowError(DomainError, ValueError):
    """A window policy or request broke the window rules (a caller bug)."""


class Window(NamedTuple):
    """A half-open interval [start_ms, end_ms) of epoch milliseconds."""

    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class WindowPolicy:
    """Windows of size_seconds aligned to origin_ms; each closes grace_seconds after its end."""

    size_seconds: int
    grace_seconds: int
    origin_ms: int

    def __post_init__(self) -> None:
        for name in ("size_seconds", "grace_seconds", "origin_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise WindowError(f"{name} must be an int, got {value!r}")
        if self.size_seconds <= 0:
            raise WindowError(f"size_seconds must be > 0, got {self.size_seconds}")
        if self.grace_seconds < 0:
            raise WindowError(f"grace_seconds must be >= 0, got {self.grace_seconds}")

    @property
    def size_ms(self) -> int:
        return self.size_seconds * MS_PER_SECOND

    @property
    def grace_ms(self) -> int:
        return self.grace_seconds * MS_PER_SECOND

    @classmethod
    def daily_shanghai(cls, grace_seconds: int = DEFAULT_GRACE_SECONDS) -> WindowPolicy:
        """The production default: one day, cut off at midnight Asia/Shanghai."""
        return cls(SECONDS_PER_DAY, grace_seconds, SHANGHAI_MIDNIGHT_ORIGIN_MS)

    @classmethod
    def demo(cls, size_seconds: int = 10, grace_seconds: int = 2) -> WindowPolicy:
        """Second-sized windows so a local demo closes batches while you watch."""
        return cls(size_seconds, grace_seconds, 0)


DEFAULT_WINDOW_POLICY = WindowPolicy.daily_shanghai()


def window_for(ts_ms: int, policy: WindowPolicy) -> Window:
    """The one window containing ts_ms (start <= ts_ms < end)."""
    if isinstance(ts_ms, bool) or not isinstance(ts_ms, int):
        raise WindowError(f"ts_ms must be an int, got {ts_ms!r}")
    size_ms = policy.size_ms
    # Floor division rounds toward -inf, so timestamps before the origin land in the right
    # window too; truncating division would put them one window late.
    start_ms = policy.origin_ms + ((ts_ms - policy.origin_ms) // size_ms) * size_ms
    return Window(start_ms, start_ms + size_ms)


def close_at_ms(window: Window | tuple[int, int], policy: WindowPolicy) -> int:
    """When the window stops accepting payments: its end plus the grace period."""
    return window[1] + policy.grace_ms


def is_closed_at(window: Window | tuple[int, int], now_ms: int, policy: WindowPolicy) -> bool:
    return now_ms >= close_at_ms(window, policy)


def next_window(window: Window | tuple[int, int], policy: WindowPolicy) -> Window:
    return Window(window[1], window[1] + policy.size_ms)


def assign_window(
    matched_at_ms: int,
    now_ms: int,
    policy: WindowPolicy,
    closed: Callable[[int], bool] | None = None,
) -> Window:
    """The window a payment matched at matched_at_ms is settled in, decided at now_ms.

    Normally the window containing matched_at_ms. If that window is closed, by time
    (now_ms >= end + grace) or because the caller already closed it (`closed(start_ms)` is
    true, e.g. its batch was published), the payment goes to the next open window: the one
    containing now_ms, or the one after the matched window if now_ms is not past it. It is
    never dropped, and since the answer is one window it is never in two batches. Windows at
    or after the one containing now_ms are never closed by time, so only `closed` can make
    the search move further.

    The answer depends on now_ms, so a MATCHED result replayed after its first window closed
    lands in a later window: the caller must remember which batch a payment_id went to (a
    table keyed by payment_id) and drop the replay, or it would be settled twice.
    """
    is_closed = closed if closed is not None else (lambda _start_ms: False)
    matched_window = window_for(matched_at_ms, policy)
    if not is_closed_at(matched_window, now_ms, policy) and not is_closed(matched_window[0]):
        return matched_window
    candidate = window_for(now_ms, policy)
    if candidate[0] <= matched_window[0]:
        # Closed by the caller before its time (or matched_at is ahead of now): move forward,
        # never back, so a payment cannot land in a window older than its match.
        candidate = next_window(matched_window, policy)
    for _ in range(WINDOW_SKIPS_MAX):
        if not is_closed(candidate[0]):
            return candidate
        candidate = next_window(candidate, policy)
    raise WindowError(
        f"no open window within {WINDOW_SKIPS_MAX} windows after {matched_window[0]}; "
        "the `closed` callback says every window is closed"
    )


def batch_id(merchant_id: str, currency: str, window_start_ms: int) -> str:
    """Deterministic batch id "B:<merchant_id>:<currency>:<window_start_ms>".

    Merchant ids may contain ':'; currency codes and integers cannot, so parse_batch_id splits
    from the right and the id stays unambiguous.
    """
    if not isinstance(merchant_id, str) or not merchant_id:
        raise WindowError(f"merchant_id must be a non-empty string, got {merchant_id!r}")
    if not isinstance(currency, str) or not currency or ":" in currency:
        raise WindowError(f"currency must be a non-empty string without ':', got {currency!r}")
    if isinstance(window_start_ms, bool) or not isinstance(window_start_ms, int):
        raise WindowError(f"window_start_ms must be an int, got {window_start_ms!r}")
    return f"{BATCH_ID_PREFIX}{merchant_id}:{currency}:{window_start_ms}"


def parse_batch_id(value: str) -> tuple[str, str, int]:
    """(merchant_id, currency, window_start_ms) back from a batch id."""
    if not value.startswith(BATCH_ID_PREFIX):
        raise WindowError(f"not a batch id: {value!r}")
    parts = value[len(BATCH_ID_PREFIX) :].rsplit(":", 2)
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise WindowError(f"not a batch id: {value!r}")
    merchant_id, currency, raw_start = parts
    try:
        window_start_ms = int(raw_start)
    except ValueError as exc:
        raise WindowError(f"not a batch id: {value!r}") from exc
    # int() also accepts "+5", " 5" and "1_0"; only the exact form batch_id writes is valid.
    if batch_id(merchant_id, currency, window_start_ms) != value:
        raise WindowError(f"not a batch id: {value!r}")
    return merchant_id, currency, window_start_ms
