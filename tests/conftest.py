"""Shared fixtures. Seeds everything; data-dependent tests skip with a reason when data is absent."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from privsplit.config import data_root


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # pytest's "no tests collected" (5) must fail CI rather than pass silently.
    if exitstatus == 5:
        session.exitstatus = 1


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def _dataset_dir(name: str):
    root = data_root()
    path = None if root is None else root / name
    if path is None or not (path / "labels.csv").exists():
        pytest.skip(f"real data '{name}' not found: set PRIVSPLIT_DATA to the folder holding {name}/ "
                    "(default ../shared/data)")
    return path


@pytest.fixture(scope="session")
def lfw_dir():
    return _dataset_dir("lfw_gender")


@pytest.fixture(scope="session")
def ckplus_dir():
    return _dataset_dir("ckplus48")
