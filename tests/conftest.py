"""Shared pytest fixtures: where the shared data lives (skip cleanly when it is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture
def shared_data() -> Path:
    """Path to ../shared/data (Tiny Shakespeare, Gutenberg Alice); skips the test when it is absent."""
    path = SHARED / "data"
    if not (path / "tinyshakespeare.txt").is_file():
        pytest.skip(f"shared data not found at {path}")
    return path


@pytest.fixture
def reference_nanogpt() -> Path:
    """Path to the unmodified reference nanoGPT checkout; skips the test when it is absent."""
    path = SHARED / "reference" / "nanoGPT"
    if not (path / "data" / "shakespeare_char" / "prepare.py").is_file():
        pytest.skip(f"reference nanoGPT not found at {path}")
    return path


# Tiny Shakespeare prepared at character level, once per session (tests/engine_fixtures.py)
from engine_fixtures import mixology_dir, shakespeare_dir  # noqa: E402, F401 - shared fixtures
