"""The operator tests' fixtures (pytest finds them here; test modules need not import them)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from .kopf_harness import Apiserver, emulated_cluster


@pytest_asyncio.fixture
async def cluster() -> AsyncIterator[Apiserver]:
    """kopf's Kubernetes: kmock's emulator with the parts :class:`.kopf_harness.Apiserver` adds."""
    async with emulated_cluster() as emulator:
        yield emulator
