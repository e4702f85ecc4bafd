"""The schema registry client for the configured URL and credentials."""

from __future__ import annotations

from infra.config import Settings
from schemas.registry import RegistryClient


def registry_client(settings: Settings) -> RegistryClient:
    """A registry client for the configured URL; credentials go to httpx only."""
    reg = settings.registry
    return RegistryClient(
        reg.url, username=reg.username or None, password=reg.password.reveal() or None
    )
