"""Fixtures shared by the open-iscsi guest suites."""

from __future__ import annotations

import pytest

from tests.conftest import running_in_ci
from tests.guest.build import GuestBuildError
from tests.guest.harness import GuestImage


@pytest.fixture(scope="module")
def guest_image() -> GuestImage:
    """The cached guest image (built on first use, ~15 s; installs QEMU etc. if missing).
    Where it cannot be built: a failure in CI, a skip on a developer's machine."""
    try:
        return GuestImage.ensure()
    except GuestBuildError as error:
        if running_in_ci():
            pytest.fail(f"guest image: {error}", pytrace=False)
        pytest.skip(f"guest image cannot be built here: {error}")
