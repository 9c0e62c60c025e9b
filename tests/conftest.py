"""Shared fixtures: single-threaded torch (tiny tensors; robust on a busy 2-core CI machine),
the shared data folder, and a tiny run config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ddpmkit.config import RunConfig, override

torch.set_num_threads(1)

SHARED_DATA = Path(
    os.environ.get("DDPMKIT_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set DDPMKIT_SHARED_DATA)")
    return SHARED_DATA


def tiny_points_config(**updates) -> RunConfig:
    """A points run that trains in about a second."""
    base = {
        "data.dataset": "moons",
        "data.num_points": 512,
        "diffusion.timesteps": 50,
        "model.kind": "mlp",
        "model.hidden": 32,
        "model.depth": 1,
        "model.emb_dim": 16,
        "train.steps": 20,
        "train.batch_size": 64,
        "train.log_every": 1,
        "train.threads": 1,
        "sample.num_samples": 200,
    }
    return override(RunConfig(), {**base, **updates})


@pytest.fixture
def tiny_cfg() -> RunConfig:
    return tiny_points_config()


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """Every test runs in its own empty folder: default outputs (samples.npz, runs/...) land there."""
    monkeypatch.chdir(tmp_path)
