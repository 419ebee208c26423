"""Fixtures several test modules share; a module opts in with
``pytestmark = pytest.mark.usefixtures("one_thread")``."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and far faster on a shared, busy machine.
    Restores the module's thread count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
