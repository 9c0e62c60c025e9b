"""Two "nodes" (network namespaces joined by a veth pair) train under torchrun with c10d rendezvous;
rank 1 is killed by SIGKILL mid-run and torchrun's elastic restart resumes from the last checkpoint
to the weights of an uninterrupted run. Needs root and iproute2 (`ip netns`); skipped otherwise."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "multinode.py"


def _netns_available() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    probe = subprocess.run(["ip", "netns", "add", "ddpm-probe"], capture_output=True, text=True)
    subprocess.run(["ip", "netns", "delete", "ddpm-probe"], capture_output=True)
    return None if probe.returncode == 0 else f"ip netns unavailable: {probe.stderr.strip()}"


@pytest.mark.slow
def test_two_nodes_recover_from_a_killed_rank_to_identical_weights(tmp_path, capsys):
    why = _netns_available()
    if why:
        pytest.skip(why)
    spec = importlib.util.spec_from_file_location("multinode", SCRIPT)
    multinode = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(multinode)
    code = multinode.main(["--steps", "600", "--every", "150", "--kill-after", "150", "--timeout", "300",
                           "--out", str(tmp_path / "mn")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "killed rank 1" in out and "resuming from step" in out and "PASS" in out
    assert "weight difference| between the two runs: 0.0" in out


def test_a_restart_on_torchruns_shared_store_names_the_fix(monkeypatch):
    import torch.distributed as dist

    from ddpmkit.training import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setattr(dist, "is_initialized", lambda: True)  # stands for the joined group
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert distributed.init_distributed("cpu").rank == 1  # first round: nothing to say
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    with pytest.warns(UserWarning, match="TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"):
        distributed.init_distributed("cpu")
