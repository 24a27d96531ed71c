"""Shared test settings: CUDA tests skip with a reason where there is no GPU."""

import pytest


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing is an install error caught elsewhere
        return False


HAS_CUDA = _has_cuda()
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def single_torch_thread():
    """One intra-op torch thread for a module of tiny tensors: on a busy 2-core machine the thread
    pool makes a 16x16 FFT or a small network call 20-1000x slower. Restored afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
