"""The client tests' stack: the committed model (accurate decisions) behind a gateway, started once
for the folder. Tests that restart or reconfigure a gateway start their own."""

from __future__ import annotations

import pytest

from tools import stack


@pytest.fixture(scope="package")
def served():
    both = stack.start_stack()
    yield both
    both.stop()
