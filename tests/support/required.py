"""What a test needs from the machine (a binary, network or mount namespaces). Without it the
test is skipped, unless the suite is told that everything is required: scripts/test, which CI
runs, sets MILLRACE_REQUIRE_TOOLS=1, so there a missing capability fails instead of skipping
silently."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRE_ENV = "MILLRACE_REQUIRE_TOOLS"


def unavailable(reason: str) -> NoReturn:
    """Skip the test for ``reason``; fail it when the suite requires every capability."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1: this suite must not skip it)", pytrace=False)
    pytest.skip(reason)
