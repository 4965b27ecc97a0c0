"""Shared pytest fixtures, NANOGPT_NO_SHARED, and the --max-skips check.

Tests take their text from the corpus bundled in the package (engine_fixtures.py); only the comparisons
with nanoGPT itself need ../shared/reference/nanoGPT and skip without it. NANOGPT_NO_SHARED=1 hides
../shared, so a run sees what a fresh clone sees; --max-skips N fails a run that skipped more than N tests
(CI runs both, so a test that quietly starts needing ../shared is caught).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


def shared_hidden() -> bool:
    return os.environ.get("NANOGPT_NO_SHARED", "") not in ("", "0")


@pytest.fixture
def reference_nanogpt() -> Path:
    """Path to the unmodified reference nanoGPT checkout; skips the test when it is absent (or hidden)."""
    path = SHARED / "reference" / "nanoGPT"
    if shared_hidden() or not (path / "data" / "shakespeare_char" / "prepare.py").is_file():
        pytest.skip(f"reference nanoGPT not found at {path}" + (" (NANOGPT_NO_SHARED)" if shared_hidden() else ""))
    return path


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--max-skips",
        type=int,
        default=None,
        metavar="N",
        help="fail the run when more than N tests were skipped (CI: a clone must run its suite, not skip it)",
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    limit = session.config.getoption("--max-skips")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if limit is None or reporter is None:
        return
    skipped = len(reporter.stats.get("skipped", []))
    if skipped > limit:
        reporter.write_line(f"--max-skips {limit}: {skipped} tests were skipped", red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# Tiny Shakespeare prepared at character level, and a tiny model trained on it, once per session
# (tests/engine_fixtures.py)
from engine_fixtures import mixology_dir, overfit_dir, shakespeare_dir, trained  # noqa: E402, F401 - shared fixtures
