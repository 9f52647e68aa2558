"""Fixtures shared by several test modules."""
import pytest
from support.scripts import import_train_net


@pytest.fixture(scope="session")
def train_net():
    """The repository's ``train_net.py`` as a module."""
    return import_train_net()
