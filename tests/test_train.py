"""The training loop: exact resume, crash safety, NaN handling, accumulation, signals, DDP."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ddpmkit import checkpoint as ckpt
from ddpmkit import io as dio
from ddpmkit.config import RunConfig, override
from ddpmkit.errors import OutputError, TrainingError
from ddpmkit.training import BatchOrder, ema_update, train


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return dio.load_tensors(run_dir / ckpt.MODEL)


def test_loss_decreases(tmp_path, tiny_cfg):
    cfg = override(tiny_cfg, {"train.steps": 150, "train.lr": 3e-3})
    hist = train(cfg, tmp_path, progress=False)
    first, last = sum(hist["loss"][:20]) / 20, sum(hist["loss"][-20:]) / 20
    assert last < 0.8 * first, (first, last)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()


def test_resume_is_bit_exact(tmp_path, tiny_cfg):
    full = train(tiny_cfg, tmp_path / "a", progress=False)
    train(override(tiny_cfg, {"train.steps": 8}), tmp_path / "b", progress=False)
    resumed = train(tiny_cfg, tmp_path / "b", resume=True, progress=False)
    assert resumed["step"][0] == 9 and resumed["loss"] == full["loss"][8:]  # bit for bit
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_resume_extends_a_finished_run(tmp_path, tiny_cfg):
    train(tiny_cfg, tmp_path, progress=False)
    hist = train(override(tiny_cfg, {"train.steps": 25}), tmp_path, resume=True, progress=False)
    assert hist["step"] == [21, 22, 23, 24, 25]
    rows = (tmp_path / "train_log.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, 26))


def test_a_fresh_run_refuses_an_earlier_run_unless_overwrite(tmp_path, tiny_cfg):
    train(override(tiny_cfg, {"train.checkpoint_every": 5}), tmp_path, progress=False)
    before = weights(tmp_path)
    with pytest.raises(OutputError, match="already holds a training run"):
        train(tiny_cfg, tmp_path, progress=False)
    after = weights(tmp_path)  # the refused call wrote nothing
    assert all(torch.equal(before[k], after[k]) for k in before)
    (tmp_path / "notes.txt").write_text("mine")
    train(override(tiny_cfg, {"train.steps": 3}), tmp_path, overwrite=True, progress=False)
    # the old step-5..20 checkpoints are gone (a resume would pick them), the user's file is kept
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000003"]
    assert (tmp_path / "notes.txt").read_text() == "mine"
    rows = (tmp_path / "train_log.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == [1, 2, 3]


def test_keep_last_k_checkpoints(tmp_path, tiny_cfg):
    train(override(tiny_cfg, {"train.checkpoint_every": 5, "train.keep_last": 2}), tmp_path, progress=False)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000015", "step-00000020"]


def test_keep_every_keeps_milestones_beside_the_last_k(tmp_path, tiny_cfg):
    cfg = override(tiny_cfg, {"train.checkpoint_every": 5, "train.keep_last": 1, "train.keep_every": 10})
    train(cfg, tmp_path, progress=False)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000010", "step-00000020"]


def test_a_checkpoint_loads_as_a_run_with_its_own_weights(tmp_path, tiny_cfg, capsys):
    from ddpmkit.cli import main
    from ddpmkit.errors import ConfigError
    from ddpmkit.run import load_run

    cfg = override(tiny_cfg, {"train.checkpoint_every": 5, "train.keep_last": 1, "train.keep_every": 10})
    train(cfg, tmp_path, progress=False)
    last, final = load_run(tmp_path / "checkpoints" / "step-00000020"), load_run(tmp_path)
    assert last.step == final.step == 20 and last.cfg == final.cfg
    weights = [list(r.model.state_dict().values()) for r in (last, final)]
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))  # model.safetensors' weights
    early = load_run(tmp_path / "checkpoints" / "step-00000010")
    weights = [list(r.model.state_dict().values()) for r in (early, final)]
    assert early.step == 10 and not all(torch.equal(a, b) for a, b in zip(*weights, strict=True))
    with pytest.raises(ConfigError, match="one set of weights"):
        load_run(tmp_path / "checkpoints" / "step-00000010", weights="best.safetensors")
    out = str(tmp_path / "early.npz")
    early_dir = str(tmp_path / "checkpoints" / "step-00000010")
    assert main(["sample", early_dir, "-n", "8", "--steps", "3", "--out", out, "-q"]) == 0
    assert Path(out).is_file()


def test_crash_during_checkpoint_keeps_the_last_good_one(tmp_path, tiny_cfg, monkeypatch):
    cfg = override(tiny_cfg, {"train.checkpoint_every": 10})
    real = dio.atomic_write_bytes
    calls = {"n": 0}

    def crashing(path, data):
        calls["n"] += 1
        if Path(path).name == ckpt.STATE_T and calls["n"] > 3:  # the 2nd checkpoint's tensors
            Path(path).with_suffix(".partial").write_bytes(data[: len(data) // 2])
            raise KeyboardInterrupt("simulated kill")
        real(path, data)

    monkeypatch.setattr(dio, "atomic_write_bytes", crashing)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path, progress=False)
    monkeypatch.setattr(dio, "atomic_write_bytes", real)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000010"]
    tensors, meta = ckpt.load_checkpoint(ckpt.list_checkpoints(tmp_path)[-1])
    assert meta["step"] == 10 and all(torch.isfinite(v.float()).all() for v in tensors.values())
    hist = train(cfg, tmp_path, resume=True, progress=False)  # and the run can go on from it
    assert hist["final_step"] == 20


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    dio.atomic_write_bytes(path, b"old")
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        dio.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old" and list(tmp_path.iterdir()) == [path]


def _poison_weights(event, info):
    if info["step"] == 7:
        with torch.no_grad():
            next(info["state"].model.parameters()).fill_(float("nan"))


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, tiny_cfg):
    cfg = override(tiny_cfg, {"train.checkpoint_every": 5})
    with pytest.raises(TrainingError, match="non-finite loss.*step-00000005"):
        train(cfg, tmp_path, progress=False, callbacks=[_poison_weights])
    tensors = weights(tmp_path)
    assert all(torch.isfinite(v.float()).all() for v in tensors.values())


def test_nan_batches_can_be_skipped(tmp_path, tiny_cfg):
    cfg = override(tiny_cfg, {"train.on_nan": "skip", "train.steps": 30})

    def poison_data(event, info):
        if info["step"] == 1:
            info["state"].x_all[3] = float("nan")  # batches holding example 3 are skipped

    hist = train(cfg, tmp_path, progress=False, callbacks=[poison_data])
    assert hist["final_step"] == 30 and all(math.isfinite(v) for v in hist["loss"])
    assert all(torch.isfinite(v.float()).all() for v in weights(tmp_path).values())


def test_gradient_accumulation_matches_full_batch(tmp_path, tiny_cfg):
    a = train(override(tiny_cfg, {"train.steps": 5}), tmp_path / "a", progress=False)
    b = train(override(tiny_cfg, {"train.steps": 5, "train.micro_batch": 16}), tmp_path / "b", progress=False)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)


def test_same_seed_same_result(tmp_path, tiny_cfg):
    a = train(tiny_cfg, tmp_path / "a", progress=False)
    b = train(tiny_cfg, tmp_path / "b", progress=False)
    assert a["loss"] == b["loss"]


def test_unwritable_run_dir(tmp_path, tiny_cfg):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError):
        train(tiny_cfg, blocker / "run", progress=False)


def test_batch_order_covers_each_epoch_once():
    order = BatchOrder(10, torch.Generator().manual_seed(0))
    idx = torch.cat([order.next(4) for _ in range(5)])  # 20 = two epochs
    assert sorted(idx[:10].tolist()) == list(range(10)) and sorted(idx[10:].tolist()) == list(range(10))


def test_ema_averages_parameters_only():
    m, e = torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        m.weight.fill_(1.0)
        e.weight.fill_(0.0)
        m.running_mean.fill_(5.0)
    ema_update(e, m, decay=0.9)
    assert torch.allclose(e.weight, torch.full((2,), 0.1)) and torch.equal(e.running_mean, m.running_mean)


def _small_unet() -> torch.nn.Module:
    from ddpmkit.models import build_model

    cfg = override(
        RunConfig(),
        {
            "model.kind": "unet",
            "model.base_channels": 8,
            "model.channel_mult": "1,2",
            "model.attn_resolutions": "4",
        },
    )
    return build_model(cfg.model, (1, 8, 8)).to(memory_format=torch.channels_last)


def test_multi_tensor_ema_and_adamw_are_bit_identical_to_the_per_tensor_loop():
    """The speed-ups of the training step change no number: foreach EMA and AdamW against plain loops."""
    torch.manual_seed(0)
    model = _small_unet()
    ema_fast, ema_loop = _small_unet(), _small_unet()
    ema_loop.load_state_dict(ema_fast.state_dict())
    for decay in (0.5, 0.9, 0.995):
        ema_update(ema_fast, model, decay)
        with torch.no_grad():
            for e, p in zip(ema_loop.parameters(), model.parameters(), strict=True):
                e.lerp_(p, 1.0 - decay)
    assert all(torch.equal(a, b) for a, b in zip(ema_fast.parameters(), ema_loop.parameters(), strict=True))

    twin = _small_unet()
    twin.load_state_dict(model.state_dict())
    opts = [
        torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.01, foreach=f)
        for m, f in ((model, True), (twin, False))
    ]
    for _ in range(3):
        for m, opt in zip((model, twin), opts, strict=True):
            m.zero_grad()
            m(
                torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)),
                torch.tensor([1, 5, 9, 13]),
            ).square().mean().backward()
            opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters(), strict=True))


def test_resume_keeps_the_multi_tensor_optimizer(tiny_cfg):
    """Checkpoints written before the optimizer used foreach hold foreach=None; loading them must not
    switch this run back to the slow per-tensor loop."""
    from ddpmkit.data import build_dataset
    from ddpmkit.training.step import build_state

    state = build_state(tiny_cfg, build_dataset(tiny_cfg.data, seed=0), torch.device("cpu"))
    tensors, meta = ckpt.optimizer_state(state.opt)
    for g in meta["optim_groups"]:
        g["foreach"] = None
    ckpt.load_optimizer_state(state.opt, tensors, meta, torch.device("cpu"))
    assert all(g["foreach"] is True for g in state.opt.param_groups)


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "ddpmkit.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        **kw,
    )


TINY_FLAGS = [
    "--dataset",
    "moons",
    "--data.num_points",
    "512",
    "-T",
    "50",
    "--model.hidden",
    "32",
    "--model.depth",
    "1",
    "--model.emb_dim",
    "16",
    "--batch-size",
    "64",
    "--train.threads",
    "1",
    "--train.log_every",
    "1",
    "--sample.num_samples",
    "200",
    "-q",
]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_checkpoints_and_resumes(tmp_path, sig):
    run = tmp_path / "run"
    p = _cli("train", *TINY_FLAGS, "--steps", "1000000", "-o", str(run), "--no-report")
    log = run / "train_log.csv"
    deadline = time.time() + 60
    while time.time() < deadline and (not log.is_file() or len(log.read_text().splitlines()) < 5):
        time.sleep(0.1)
    p.send_signal(sig)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 128 + sig, out  # 130 after SIGINT, 143 after SIGTERM
    assert f"resume with: ddpm train --resume {run}" in out
    step = int(ckpt.list_checkpoints(run)[-1].name.split("-")[1])
    assert step >= 4
    r = _cli("train", "--resume", str(run), "--steps", str(step + 3), "--no-report", "-q")
    out, _ = r.communicate(timeout=60)
    assert r.returncode == 0, out
    assert ckpt.list_checkpoints(run)[-1].name == f"step-{step + 3:08d}"


def test_two_process_ddp_matches_one_process(tmp_path):
    """torchrun with 2 gloo processes and global batch 64 == 1 process with batch 64."""
    flags = [
        *TINY_FLAGS,
        "--steps",
        "6",
        "--no-report",
        "--train.checkpoint_every",
        "3",
        "--train.keep_last",
        "5",
    ]
    one = _cli("train", *flags, "-o", str(tmp_path / "one"))
    out1, _ = one.communicate(timeout=120)
    assert one.returncode == 0, out1
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            "0",
            "--rdzv_backend",
            "c10d",
            "--rdzv_endpoint",
            "127.0.0.1:0",
            "-m",
            "ddpmkit.cli",
            "train",
            *flags,
            "-o",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert two.returncode == 0, two.stdout + two.stderr
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "two")] == ["step-00000003", "step-00000006"]
    assert two.stdout.count("trained 6/6 steps") == 1  # rank 0 alone reports
    w1, w2 = weights(tmp_path / "one"), weights(tmp_path / "two")
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-4, atol=1e-5)


def test_bf16_autocast_trains_on_cpu(tmp_path, tiny_cfg):
    hist = train(override(tiny_cfg, {"train.precision": "bf16", "train.steps": 5}), tmp_path, progress=False)
    assert hist["final_step"] == 5 and all(math.isfinite(v) for v in hist["loss"])


def test_fp16_needs_cuda(tmp_path, tiny_cfg):
    from ddpmkit.errors import ConfigError

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        train(override(tiny_cfg, {"train.precision": "fp16"}), tmp_path, progress=False)


def test_tensorboard_logging(tmp_path, tiny_cfg):
    pytest.importorskip("tensorboard")
    train(override(tiny_cfg, {"train.tensorboard": True, "train.steps": 3}), tmp_path, progress=False)
    assert any((tmp_path / "tensorboard").iterdir())


def test_max_minutes_stops_and_saves(tmp_path, tiny_cfg):
    hist = train(
        override(tiny_cfg, {"train.steps": 10**6, "train.max_minutes": 0.02}), tmp_path, progress=False
    )
    assert hist["stopped"] == "time budget" and 0 < hist["final_step"] < 10**6
    assert ckpt.list_checkpoints(tmp_path)[-1].name == f"step-{hist['final_step']:08d}"


def test_atomic_write_gives_normal_permissions(tmp_path):
    path = tmp_path / "f.bin"
    dio.atomic_write_bytes(path, b"x")
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_channels_last_matches_default_layout(tmp_path):
    """The memory format is an implementation detail: same losses within float tolerance."""
    base = {
        "data.dataset": "digits",
        "diffusion.timesteps": 20,
        "model.kind": "unet",
        "model.base_channels": 8,
        "model.channel_mult": "1,2",
        "model.attn_resolutions": "4",
        "train.steps": 3,
        "train.batch_size": 16,
        "train.threads": 1,
        "train.log_every": 1,
    }
    a = train(override(RunConfig(), base), tmp_path / "a", progress=False)
    b = train(override(RunConfig(), {**base, "train.channels_last": True}), tmp_path / "b", progress=False)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
def test_lr_schedules(tiny_cfg, schedule):
    from ddpmkit.training.step import lr_at

    cfg = override(tiny_cfg, {"train.lr": 1e-3, "train.warmup_steps": 10, "train.lr_schedule": schedule,
                              "train.lr_min_ratio": 0.1})  # fmt: skip
    assert lr_at(cfg, 4, 0.0) == pytest.approx(5e-4)  # warm-up: (4 + 1) / 10 of the peak
    mid = {"constant": 1e-3, "cosine": 1e-3 * (0.1 + 0.9 * 0.5), "linear": 1e-3 * (0.1 + 0.9 * 0.5)}
    assert lr_at(cfg, 500, 0.5) == pytest.approx(mid[schedule])
    assert lr_at(cfg, 999, 1.0) == pytest.approx(1e-3 if schedule == "constant" else 1e-4)
    quarter = 0.1 + 0.9 * (0.5 * (1 + math.cos(math.pi / 4)) if schedule == "cosine" else 0.75)
    assert lr_at(cfg, 250, 0.25) == pytest.approx(1e-3 * (quarter if schedule != "constant" else 1))


def test_lr_cycle_restarts_the_decay_and_ignores_the_run_progress(tiny_cfg):
    from ddpmkit.training.step import lr_at

    cfg = override(tiny_cfg, {"train.lr": 1e-3, "train.lr_schedule": "linear", "train.lr_cycle": 100})
    # step 150 is half-way through its cycle, whatever fraction of the run (time or steps) is done
    assert lr_at(cfg, 150, 0.9) == pytest.approx(5e-4)
    assert lr_at(cfg, 200, 0.99) == pytest.approx(1e-3)  # a new cycle starts at the peak
    assert lr_at(cfg, 199, 0.1) == pytest.approx(1e-5)  # its last step: 1 / 100 of the peak
    constant = override(cfg, {"train.lr_schedule": "constant"})
    assert lr_at(constant, 150, 0.5) == pytest.approx(1e-3)  # cycles only shape a decaying schedule


def test_decaying_lr_follows_the_step_count_and_resumes_exactly(tmp_path, tiny_cfg):
    cfg = override(tiny_cfg, {"train.steps": 20, "train.log_every": 1, "train.lr_schedule": "linear"})
    full = train(cfg, tmp_path / "a", progress=False)
    lrs = [float(r.split(",")[2]) for r in (tmp_path / "a" / "train_log.csv").read_text().splitlines()[1:]]
    assert lrs[-1] == pytest.approx(cfg.train.lr / 20)
    assert all(b < a for a, b in zip(lrs, lrs[1:], strict=False))
    train(override(cfg, {"train.checkpoint_every": 8, "train.keep_last": 5}), tmp_path / "b", progress=False)
    for later in ckpt.list_checkpoints(tmp_path / "b")[1:]:  # as if stopped right after step 8
        shutil.rmtree(later)
    resumed = train(cfg, tmp_path / "b", resume=True, progress=False)
    assert resumed["loss"] == full["loss"][8:]  # the schedule picks up at step 9, bit for bit


def test_lr_decays_with_the_time_budget():
    from ddpmkit.training.loop import _progress

    assert _progress(10, 100, 0.0, 0.0) == 0.1
    assert _progress(10, 10**6, 30.0, 1.0) == 0.5  # half the minute gone: half the schedule
    assert _progress(90, 100, 30.0, 1.0) == 0.9 and _progress(10, 100, 90.0, 1.0) == 1.0
