"""The one exception root of the project; every package's errors subclass it."""


class SettleError(Exception):
    """Root of every error this project raises on purpose."""


class DomainError(SettleError):
    """A rule of the domain core was broken by its caller (a bug, not bad input)."""
