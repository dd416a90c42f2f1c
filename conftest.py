"""What the package's tests (tests/) and the bench's (bench/tests/) share."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core machine run fastest on one thread (a second intra-op thread only waits on
    the other's barrier), and in-process runs then reduce floats in the same order as `OMP_NUM_THREADS=1`
    subprocesses."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
