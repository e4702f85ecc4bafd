"""/v1/batches routes (placeholder: replaced by the module's implementation)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
