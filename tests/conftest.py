"""Shared fixtures. Seeds everything; data-dependent tests skip with a reason when data is absent."""
from __future__ import annotations

import random
from pathlib import Path

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


@pytest.fixture
def one_thread():
    """Tiny tensors: intra-op threads only add spin-wait contention on the 2 shared CI cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def lfw_dir():
    return _dataset_dir("lfw_gender")


@pytest.fixture(scope="session")
def ckplus_dir():
    return _dataset_dir("ckplus48")


def make_faces(n: int = 48, size: int = 32, n_ids: int = 8, seed: int = 0):
    """Tiny in-memory FaceData: gender shifts the red channel, identity adds a fixed pattern."""
    from privsplit.data import FaceData, Manifest, Preprocess

    g = torch.Generator().manual_seed(seed)
    ids = torch.arange(n) % n_ids
    gender = ids % 2
    pattern = torch.rand(n_ids, 3, size, size, generator=g) * 80
    imgs = 60 + pattern[ids] + torch.rand(n, 3, size, size, generator=g) * 40
    imgs[:, 0] += gender.view(n, 1, 1).float() * 70
    manifest = Manifest(root=Path("."), paths=tuple(f"{i}.png" for i in range(n)),
                        columns={"gender": tuple("FM"[int(v)] for v in gender),
                                 "identity": tuple(f"id{int(v)}" for v in ids)}, name="tiny")
    return FaceData(images=imgs.clamp(0, 255).to(torch.uint8), labels={"gender": gender, "identity": ids},
                    classes={"gender": ["F", "M"], "identity": [f"id{i}" for i in range(n_ids)]},
                    manifest=manifest, preprocess=Preprocess(size=size))


@pytest.fixture
def tiny_faces():
    return make_faces()
