import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models: one intra-op thread is as fast, and immune to the spin-waits that make every op
    ~100x slower when the (shared, 2-core) machine is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
