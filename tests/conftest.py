"""Fixtures shared by every test module."""

import pytest


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each in-process run configures Accelerate anew (e.g. another mixed precision), as a new process would."""
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
