"""Shared test settings: seeded, offline, one intra-op thread.

Tests use small inputs, for which one thread is as fast as two on an idle machine and much faster on
a busy one; subprocess tests (2-process gloo jobs) then do not oversubscribe the cores either.
"""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
