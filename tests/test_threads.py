"""Tests for the thread default: one thread for small work, the idle cores otherwise, the
environment respected, bad values refused."""

from __future__ import annotations

import pytest
import torch

from ddpmkit import threads
from ddpmkit.errors import ConfigError


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _machine(monkeypatch, cores: int, load: float) -> None:
    monkeypatch.setattr(threads, "available_cores", lambda: cores)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (load, load, load))


@pytest.mark.parametrize(("cores", "load", "expected"), [(8, 0.0, 8), (8, 2.2, 6), (2, 1.9, 1), (2, 7.0, 1)])
def test_auto_uses_the_cores_not_already_busy(monkeypatch, cores, load, expected):
    _machine(monkeypatch, cores, load)
    assert threads.auto_threads() == expected
    assert threads.set_threads(0) == expected and torch.get_num_threads() == expected


def test_small_work_gets_one_thread_even_on_an_idle_machine(monkeypatch):
    _machine(monkeypatch, 16, 0.0)
    assert threads.set_threads(0, small_work=True) == 1 and torch.get_num_threads() == 1


def test_explicit_threads_win_and_the_environment_is_left_alone(monkeypatch):
    _machine(monkeypatch, 4, 3.0)
    assert threads.set_threads(3) == 3 and torch.get_num_threads() == 3
    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.set_threads(0) is None and torch.get_num_threads() == 2


def test_no_load_average_means_all_cores(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 4)

    def unavailable():
        raise OSError("no load average")

    monkeypatch.setattr(threads.os, "getloadavg", unavailable)
    assert threads.idle_cores() == 4


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_bad_thread_counts_are_config_errors(bad):
    with pytest.raises(ConfigError, match="--threads must be an integer >= 0"):
        threads.set_threads(bad)
