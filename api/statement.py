"""The merchant statement page (placeholder: replaced by the page's implementation)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
