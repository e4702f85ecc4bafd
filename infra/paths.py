"""Where the project lives and where a run keeps its data by default."""

from __future__ import annotations

from pathlib import Path
from typing import Final

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
# Data, logs and pid files of the local stack and pipeline (SETTLE_RUN_DIR overrides it).
DEFAULT_RUN_DIR: Final = REPO_ROOT / ".run"
