"""Distillation (issue 27): the progressive target against an exact Gaussian teacher, the consistency
boundary condition, rounds that halve the steps, students as runs (sample, eval, classes), bit-exact
resume across a round change, and one-line refusals of what cannot be distilled."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import ddpmkit
from ddpmkit.checkpoint import list_checkpoints
from ddpmkit.cli import main
from ddpmkit.config import RunConfig
from ddpmkit.data import build_dataset
from ddpmkit.denoiser import sampling_timesteps
from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.distillation import (
    consistency_r,
    consistency_x0,
    ddim_step,
    lognormal_sigma,
    progressive_target,
    pseudo_huber,
    timestep_at_sigma,
    top_step,
)
from ddpmkit.errors import ConfigError
from ddpmkit.io import load_tensors
from ddpmkit.run import load_run
from ddpmkit.schedules import schedule_betas
from ddpmkit.training.distill import (
    next_round,
    progressive_ladder,
    progressive_loss,
    progressive_round,
    round_teacher,
    start_from_teacher,
    student_config,
)
from ddpmkit.training.step import build_state

TEACHER = ["--dataset", "moons", "--data.num_points", "512", "-T", "100", "--model.kind", "mlp",
           "--model.mlp.hidden", "32", "--model.mlp.depth", "1", "--batch-size", "64", "--train.threads", "1",
           "--sample.num_samples", "200"]  # fmt: skip


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """A tiny moons teacher, and a class-conditional one on the labelled Datasaurus shapes."""
    root = tmp_path_factory.mktemp("teachers")
    plain, cond = root / "plain", root / "cond"
    assert main(["train", *TEACHER, "--steps", "60", "--no-report", "-q", "-o", str(plain)]) == 0
    assert main(["train", *TEACHER, "--dataset", "datasaurus", "--cond", "class", "--steps", "30",
                 "--no-report", "-q", "-o", str(cond)]) == 0  # fmt: skip
    return plain, cond


def _gaussian(ab: torch.Tensor, mu: float, s: float):
    """The exact denoiser E[x | z] of x ~ N(mu, s^2) at alpha_bar ab."""
    return lambda z: mu + ab.sqrt() * s**2 / (ab * s**2 + 1 - ab) * (z - ab.sqrt() * mu)


def test_progressive_target_one_student_step_lands_on_the_teachers_two():
    """Alg. 2's x~ is the x whose single DDIM step from z_t reaches the teacher's z_s, for any states."""
    g = torch.Generator().manual_seed(0)
    z_t, z_s = torch.randn(64, 2, generator=g), torch.randn(64, 2, generator=g)
    ab_t, ab_s = torch.rand(64, 1, generator=g) * 0.5, 0.5 + torch.rand(64, 1, generator=g) * 0.5
    x = progressive_target(z_t, z_s, ab_t, ab_s)
    assert torch.allclose(ddim_step(z_t, x, ab_t, ab_s), z_s, atol=1e-4)
    # the last step reaches the data (ab_s = 1): the target is the teacher's end point itself
    assert torch.allclose(progressive_target(z_t, z_s, ab_t, torch.ones_like(ab_s)), z_s)


def test_progressive_target_with_an_exact_gaussian_teacher():
    """Gaussian data x ~ N(mu, s^2): E[x | z] is linear and the probability-flow ODE maps z_t to
    z_s = sqrt(ab_s) mu + sqrt(v_s / v_t) (z_t - sqrt(ab_t) mu), v = ab s^2 + 1 - ab. Two DDIM steps of
    the exact teacher approximate that map (DDIM is exact in the limit of small steps); the student's
    target from 2 x 256 teacher sub-steps equals the exact ODE's x~ within 1e-3."""
    mu, s = 0.7, 0.3
    ab = torch.tensor([0.05, 0.4, 0.9], dtype=torch.float64)  # t, and s (fine steps in between)
    z_t = torch.linspace(-3, 3, 101, dtype=torch.float64)[:, None]
    v = ab * s**2 + 1 - ab
    exact_s = ab[2].sqrt() * mu + (v[2] / v[0]).sqrt() * (z_t - ab[0].sqrt() * mu)
    levels = torch.cat(
        [torch.linspace(float(ab[0]), float(ab[1]), 257), torch.linspace(float(ab[1]), float(ab[2]), 257)[1:]]
    )
    z = z_t
    for a, b in zip(levels[:-1], levels[1:], strict=True):  # the teacher's DDIM with the exact denoiser
        z = ddim_step(z, _gaussian(a, mu, s)(z), a, b)
    assert torch.allclose(z, exact_s, atol=1e-3)
    target = progressive_target(z_t, z, ab[0], ab[2])
    assert torch.allclose(target, progressive_target(z_t, exact_s, ab[0], ab[2]), atol=5e-3)
    # and a teacher of one exact DDIM step has its own denoiser output as the target
    one = ddim_step(z_t, _gaussian(ab[0], mu, s)(z_t), ab[0], ab[2])
    assert torch.allclose(progressive_target(z_t, one, ab[0], ab[2]), _gaussian(ab[0], mu, s)(z_t))


def test_consistency_boundary_condition_is_exact():
    """f(x, t_min) = x / sqrt(alpha_bar) (x in data scale) whatever the network outputs, also on a
    respaced chain that visits t = 0; above t_min the network's v matters."""
    diff = GaussianDiffusion(schedule_betas(RunConfig().diffusion), objective="consistency")
    x = torch.randn(8, 2)
    for out in (torch.randn(8, 2), torch.full((8, 2), 1e6)):
        t0 = torch.zeros(8, dtype=torch.long)
        assert torch.equal(diff.predict_x0(x, t0, out), x / diff.alphas_cumprod[0].sqrt())
        t = torch.full((8,), 500)
        assert not torch.allclose(diff.predict_x0(x, t, out), x / diff.alphas_cumprod[500].sqrt())
    respaced = diff.respace([0, 250, 999])
    assert respaced.sigma_min == diff.sigma_min and float(respaced.consistency_skip[0]) == 1.0
    # the training path's f (fractional t from sigma) agrees with the chain's at integer steps
    sig = (1 / diff.alphas_cumprod[[0, 300, 999]].double() - 1).sqrt()
    assert torch.allclose(
        timestep_at_sigma(sig, diff.alphas_cumprod), torch.tensor([0.0, 300.0, 999.0]), atol=1e-3
    )
    ab = diff.alphas_cumprod[[300]].view(1, 1)
    out = torch.randn(1, 2)
    assert torch.allclose(consistency_x0(x[:1], out, ab, diff.consistency_skip[[300]].view(1, 1)),
                          diff.predict_x0(x[:1], torch.tensor([300]), out))  # fmt: skip


def test_consistency_sampling_starts_at_sigma_max():
    """Song et al. sample from sigma = 80, where training stops; on the cosine chain that is a few
    steps below T - 1 (alpha_bar(T-1) = 2.4e-9 is sigma = 2e4), on a short linear chain T - 1 itself."""
    from ddpmkit.config import SampleConfig
    from ddpmkit.samplers import sample

    diff = GaussianDiffusion(
        schedule_betas(RunConfig.from_preset("mnist").diffusion), objective="consistency"
    )
    top = top_step(diff.alphas_cumprod)
    sig = (1 / diff.alphas_cumprod.double() - 1).sqrt()
    assert sig[top] <= 80 < sig[top + 1] and top < 999
    seen = []
    model = lambda x, t, **_: torch.zeros_like(x)  # noqa: E731
    for steps in (1, 2, 4):
        seen.clear()
        sample(model, diff, torch.randn(3, 2), SampleConfig(sampler="consistency", steps=steps),
               callback=lambda d: seen.append(d["t"]))  # fmt: skip
        assert seen[0] == top and len(seen) == steps and seen == sorted(seen, reverse=True)
    assert top_step(torch.linspace(0.999, 0.01, 10)) == 9  # sigma(T-1) = 9.9: the chain's last step


def test_ect_curriculum_and_loss():
    """Stage 0 pulls towards the data (r = sigma_min), later stages move r towards t (t - r halves at
    large t per stage); lognormal quantiles have ECT's median exp(-1.1); pseudo-Huber ~ L2 / 2c near 0."""
    sigma = torch.tensor([0.01, 0.5, 5.0, 50.0])
    assert torch.all(consistency_r(sigma, 0, 0.002) == 0.002)
    gaps = [sigma - consistency_r(sigma, k, 0.002) for k in (3, 4, 5)]
    assert torch.allclose(gaps[1][2:] / gaps[0][2:], torch.tensor(0.5), atol=1e-3)
    assert torch.all(gaps[2] < gaps[1]) and torch.all(consistency_r(sigma, 5, 0.002) < sigma)
    # ECT's r = t (1 - (1 + k sigmoid(-b t)) / q^stage), k = 8, b = 1, q = 2, by hand at t = 1, stage 2
    by_hand = 1.0 * (1 - (1 + 8 / (1 + math.exp(1.0))) / 4)
    assert math.isclose(float(consistency_r(torch.tensor([1.0]), 2, 0.002)), by_hand, rel_tol=1e-6)
    assert math.isclose(float(lognormal_sigma(torch.tensor(0.5))), math.exp(-1.1), rel_tol=1e-6)
    a, b = torch.zeros(1, 4), torch.full((1, 4), 1e-3)
    assert math.isclose(float(pseudo_huber(a, b, 1.0)), 4e-6 / 2, rel_tol=1e-3)


@pytest.mark.parametrize("T, n", [(1000, 1), (1000, 4), (1000, 16), (100, 8), (4000, 32)])
def test_the_student_trains_at_the_steps_its_sampler_visits(T, n):
    diff = GaussianDiffusion(schedule_betas(RunConfig().diffusion.__class__(schedule="cosine", timesteps=T)))
    ladder = progressive_ladder(diff, n)
    assert ladder[0] == -1 and len(ladder) == 2 * n + 1 and torch.all(ladder[1:] >= 0)
    assert sorted(ladder[2::2].tolist(), reverse=True) == [int(t) for t in sampling_timesteps(diff, n)]


def test_guidance_goes_into_the_first_round_only(teachers, tmp_path):
    """A guided teacher's w is applied in round 0; later rounds' teachers are students that carry it,
    and a student of a student neither applies it again nor takes another --guidance."""
    cfg = student_config(teachers[1], "progressive", teacher_steps=8, to_steps=2, round_steps=2, guidance=1.5)
    assert round_teacher(cfg, 0) == ("v", 1.5, "") and round_teacher(cfg, 1) == ("v", 0.0, "")
    assert (cfg.distill.guidance, cfg.sample.guidance) == (1.5, 0.0)
    s = tmp_path / "s"
    assert main(["distill", str(teachers[1]), "--teacher-steps", "8", "--to-steps", "4", "--round-steps", "2",
                 "--guidance", "1.5", "-o", str(s), "--no-report", "-q"]) == 0  # fmt: skip
    again = student_config(s, "progressive", to_steps=2, round_steps=2)
    assert (again.distill.teacher_steps, again.distill.guidance, again.distill.teacher_guidance) == (
        4,
        1.5,
        0.0,
    )
    with pytest.raises(ConfigError, match="fixed in its weights"):
        student_config(s, "progressive", to_steps=2, guidance=1.0)
    # a consistency student of a class-conditional run is guided by its sampler instead
    cons = student_config(teachers[1], "consistency")
    assert cons.distill.guidance == 0.0 and cons.sample.guidance == load_run(teachers[1]).cfg.sample.guidance
    with pytest.raises(ConfigError, match="guided when it samples"):
        student_config(teachers[1], "consistency", guidance=1.0)


def test_a_weak_run_guides_the_first_teacher_of_an_unconditional_run(teachers, tmp_path):
    """Autoguidance fixed into a progressive student: round 0's teacher is guided by the weak run
    (which changes the targets), later rounds by nothing; consistency and mismatched guides refused."""
    weak = tmp_path / "weak"
    assert main(["train", *TEACHER, "--steps", "5", "--no-report", "-q", "-o", str(weak)]) == 0
    cfg = student_config(teachers[0], "progressive", teacher_steps=8, to_steps=2, round_steps=2,
                         guidance=1.0, guide=weak)  # fmt: skip
    assert round_teacher(cfg, 0)[1:] == (1.0, str(weak)) and round_teacher(cfg, 1)[1:] == (0.0, "")
    assert (cfg.distill.guidance, cfg.sample.guidance, cfg.distill.guide) == (1.0, 0.0, str(weak))
    plain = student_config(teachers[0], "progressive", teacher_steps=8, to_steps=2, round_steps=2)
    assert plain.distill.teacher_guidance == 0.0  # unconditional, unguided: nothing to mix in
    losses = []
    for c in (plain, cfg):
        state = build_state(c, build_dataset(c.data), torch.device("cpu"))
        start_from_teacher(state)
        g = torch.Generator().manual_seed(0)
        x0 = state.x_all[:32]
        t, noise = torch.randint(0, 100, (32,), generator=g), torch.randn(x0.shape, generator=g)
        losses.append(progressive_loss(state, state.model, x0, t, noise, None))
    assert not torch.allclose(losses[0], losses[1])  # the guided teacher's targets differ
    with pytest.raises(ConfigError, match="--method progressive"):
        student_config(teachers[0], "consistency", guide=weak)
    with pytest.raises(ConfigError, match="another data space|another process|draws"):
        student_config(teachers[0], "progressive", teacher_steps=8, to_steps=2, guide=teachers[1])


def test_configs_that_cannot_be_distilled_are_refused(teachers, tmp_path):
    with pytest.raises(ConfigError, match="halved"):
        student_config(teachers[0], "progressive", to_steps=4, overrides={"distill.teacher_steps": 0})
    with pytest.raises(ConfigError, match="halved"):
        student_config(teachers[0], "progressive", teacher_steps=12, to_steps=4)
    with pytest.raises(ConfigError, match="uniform time grid"):
        student_config(teachers[0], "progressive", overrides={"sample.grid": "karras"})
    with pytest.raises(ConfigError, match="teacher itself"):
        ddpmkit.distill(teachers[0], teachers[0], method="consistency", overwrite=True)
    assert (teachers[0] / "model.safetensors").is_file()  # the teacher is untouched
    short = tmp_path / "short"  # T = 20 < 64: consistency tuning needs no teacher grid
    assert (
        main(
            [
                "train",
                *TEACHER,
                "-T",
                "20",
                "--sample.steps",
                "20",
                "--steps",
                "5",
                "--no-report",
                "-q",
                "-o",
                str(short),
            ]
        )
        == 0
    )
    assert student_config(short, "consistency", round_steps=2).sample.steps == 1
    with pytest.raises(ConfigError, match="halved"):
        student_config(short, "progressive")


def test_a_student_does_not_inherit_its_teachers_length(teachers, tmp_path):
    """A teacher trained for epochs or minutes: its student runs for its own rounds, with no budget
    unless --max-minutes gives one (the teacher's 20 minutes once cut a student off in round 2)."""
    timed = tmp_path / "timed"
    args = ["train", *TEACHER, "--train.epochs", "0.25", "--max-minutes", "20", "--no-report", "-q"]
    assert main([*args, "-o", str(timed)]) == 0
    cfg = student_config(timed, "progressive", teacher_steps=16, to_steps=4, round_steps=7)
    assert (cfg.train.steps, cfg.train.epochs, cfg.train.max_minutes) == (14, 0.0, 0.0)
    cfg = student_config(timed, "consistency", round_steps=3, overrides={"train.max_minutes": 5.0})
    assert (cfg.train.steps, cfg.train.epochs, cfg.train.max_minutes) == (12, 0.0, 5.0)


def test_a_consistency_student_has_no_diffusers_scheduler(teachers):
    from ddpmkit.interop.diffusers import InteropError, scheduler_config

    with pytest.raises(InteropError, match="consistency"):
        scheduler_config(student_config(teachers[0], "consistency"))


def test_rounds_halve_the_steps_and_the_student_becomes_the_teacher(teachers, tmp_path):
    cfg = student_config(teachers[0], "progressive", teacher_steps=16, to_steps=2, round_steps=5)
    assert cfg.train.steps == 15 and cfg.sample.sampler == "ddim" and cfg.sample.steps == 2
    assert cfg.train.lr_cycle == 5  # --lr-schedule linear|cosine anneals within each round
    assert [progressive_round(cfg, s)[1] for s in (0, 4, 5, 9, 10, 14)] == [8, 8, 4, 4, 2, 2]

    class State:  # what next_round reads
        pass

    st = State()
    st.cfg, st.model, st.ema_model = cfg, torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    st.extras = {"teacher": torch.nn.Linear(2, 2)}
    st.opt = torch.optim.Adam(st.model.parameters())
    st.model(torch.ones(1, 2)).sum().backward()
    st.opt.step()
    for st.step in (0, 4, 6, 15):  # not a round's first step (or past the last round): nothing changes
        next_round(st)
        assert not torch.equal(st.extras["teacher"].weight, st.ema_model.weight) and st.opt.state
    st.step = 10
    next_round(st)
    assert torch.equal(st.extras["teacher"].weight, st.ema_model.weight)
    assert torch.equal(st.model.weight, st.ema_model.weight) and not st.opt.state


@pytest.mark.parametrize("method", ["progressive", "consistency"])
def test_resume_is_bit_exact_across_a_round(teachers, tmp_path, method):
    a, b = tmp_path / "a", tmp_path / "b"
    common = [str(teachers[0]), "--method", method, "--round-steps", "4", "--no-report", "-q"]
    if method == "progressive":
        common += ["--teacher-steps", "8", "--to-steps", "2"]
    assert main(["distill", *common, "--steps", "8", "-o", str(a)]) == 0
    assert main(["distill", *common, "--steps", "4", "-o", str(b)]) == 0
    assert main(["distill", "--resume", str(b), "--steps", "8", "--no-report", "-q"]) == 0
    for f in ("model.safetensors",):
        wa, wb = load_tensors(a / f), load_tensors(b / f)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ca, cb = (load_tensors(list_checkpoints(r)[-1] / "state.safetensors") for r in (a, b))
    extras = [k for k in ca if k.startswith("extra.")]
    assert bool(extras) == (method == "progressive")  # the teacher travels in the checkpoint
    assert all(torch.equal(ca[k], cb[k]) for k in extras)
    assert all(torch.equal(ca[k], cb[k]) for k in ca if k.startswith(("optim.", "model.", "ema.")))


def test_a_student_is_a_run(teachers, tmp_path, capsys):
    """It samples with its own sampler and steps by default, and is scored by ddpm eval; the teacher's
    directory is not needed once it is trained."""
    s = tmp_path / "student"
    assert main(["distill", str(teachers[0]), "--method", "consistency", "--to-steps", "2",
                 "--round-steps", "3", "--huber-c", "0.05", "-o", str(s), "-q"]) == 0  # fmt: skip
    cfg = load_run(s).cfg
    assert cfg.distill.huber_c == 0.05
    assert (cfg.sample.sampler, cfg.sample.steps, cfg.diffusion.objective) == (
        "consistency",
        2,
        "consistency",
    )
    assert json.loads((s / "metrics.json").read_text())["swd_ratio"] > 0
    capsys.readouterr()
    assert main(["sample", str(s), "-n", "50", "--out", str(tmp_path / "x.npz")]) == 0
    assert "consistency, 2 steps" in capsys.readouterr().out
    assert np.load(tmp_path / "x.npz")["arr_0"].shape == (50, 2)
    assert main(["eval", str(tmp_path / "x.npz"), "--dataset", "moons"]) == 0


def test_a_guided_teacher_gives_a_class_conditional_student(teachers, tmp_path, capsys):
    s = tmp_path / "cs"
    assert main(["distill", str(teachers[1]), "--teacher-steps", "4", "--to-steps", "2", "--round-steps", "2",
                 "--guidance", "1.5", "-o", str(s), "--no-report", "-q"]) == 0  # fmt: skip
    cfg = load_run(s).cfg
    assert cfg.distill.guidance == 1.5 and cfg.sample.guidance == 0.0 and cfg.model.num_classes == 13
    assert main(["sample", str(s), "-n", "26", "--class", "0,4", "--out", str(tmp_path / "c.npz")]) == 0


@pytest.mark.parametrize(
    "case, needle",
    [
        (lambda t, s: [str(s), "--method", "progressive"], "consistency student"),
        (lambda t, s: [str(t), "--teacher-steps", "64", "--to-steps", "3"], "halved one or more times"),
        (lambda t, s: [str(t), "--teacher-steps", "8", "--to-steps", "8"], "halved one or more times"),
        (lambda t, s: [str(t), "--guidance", "2"], "not class-conditional"),
        (lambda t, s: [str(t) + "-missing"], "does not exist"),
        (lambda t, s: [], "give the teacher run"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(teachers, tmp_path, capsys, case, needle):
    s = tmp_path / "cons"
    if not s.exists():
        assert main(["distill", str(teachers[0]), "--method", "consistency", "--round-steps", "1",
                     "-o", str(s), "--no-report", "-q"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["distill", *case(teachers[0], s), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_an_unconditional_student_refuses_a_class(teachers, tmp_path, capsys):
    s = tmp_path / "p"
    assert main(["distill", str(teachers[0]), "--teacher-steps", "4", "--to-steps", "2", "--round-steps", "1",
                 "-o", str(s), "--no-report", "-q"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["sample", str(s), "--class", "1", "-n", "4"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
