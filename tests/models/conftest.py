"""Fixtures shared by the model tests (helpers that are plain functions: fake_checkpoints.py)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture
def single_thread():
    """Narrow networks run faster on one thread (no OpenMP barriers), and much faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
