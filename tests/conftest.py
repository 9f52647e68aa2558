"""Fixtures shared by several test modules."""
import pytest
import torch
from support.scripts import import_train_net


@pytest.fixture(scope="session")
def train_net():
    """The repository's ``train_net.py`` as a module."""
    return import_train_net()


@pytest.fixture
def one_thread():
    """One intra-op thread: the same reduction order in every run (bit-exact comparisons of training runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
