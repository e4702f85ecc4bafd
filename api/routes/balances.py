"""/v1/balances routes (placeholder: replaced by the module's implementation)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
