"""Shared pytest set-up: every test gets its own TMPDIR (mosaicml-streaming leaves /tmp locks and
/dev/shm segments behind), and tests find the shared real data beside the checkout."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HETRON_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data not found at {SHARED_DATA}; set HETRON_SHARED_DATA")
    return SHARED_DATA
