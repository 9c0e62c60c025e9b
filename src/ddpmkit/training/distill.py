"""Distillation as training tasks: `progressive` and `consistency` (registered in `tasks.py`).

Both start from the teacher's weights (`start_from_teacher`, on a fresh run only: a resume takes
everything from its checkpoint) and train with the trainer's machinery. Progressive distillation
carries its teacher as an extra network of the training state (`TrainState.extras`), which the
checkpoints save and restore, and replaces it by the student at each round (`next_round`).
The student config is made by `student_config` (what `ddpm distill` runs).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from ..config import DISTILL_METHODS, DiffusionConfig, RunConfig, check_progressive
from ..denoiser import Denoiser, sampling_timesteps
from ..diffusion import Cond, GaussianDiffusion, build_diffusion
from ..distillation import (
    SIGMA_MAX,
    consistency_r,
    consistency_skip,
    consistency_x0,
    ddim_step,
    huber_c,
    lognormal_sigma,
    progressive_target,
    pseudo_huber,
    timestep_at_sigma,
    truncated_snr_weight,
)
from ..errors import CheckpointError, ConfigError
from ..io import load_tensors, network_weights, stored_shape

# consistency tuning's default length in curriculum stages: on the MNIST teacher FID peaked at the
# end of stage 4 and diverged in stages 5-8 at lr 2e-4 and 1e-4 alike (docs/distillation.md)
CONSISTENCY_STAGES = 4


# ----- the student's config ---------------------------------------------------------------------------
def student_config(
    teacher_dir: str | Path,
    method: str,
    *,
    to_steps: int | None = None,
    teacher_steps: int | None = None,
    round_steps: int = 1000,
    guidance: float | None = None,
    guide: str | Path = "",
    overrides: dict | None = None,
) -> RunConfig:
    """The config of a student of the run in `teacher_dir`: `method` progressive (the run's DDIM on
    `teacher_steps` steps halved down to `to_steps`) or consistency (sampled in `to_steps` steps by
    default); ConfigError (one line) for what cannot be distilled. `guide`: progressive only, a weaker
    run that guides the first teacher (autoguidance, weight `guidance`), fixed into the student like
    classifier-free guidance. `overrides`: dotted, on top."""
    from ..checks import check_choice
    from ..denoiser import guidance_weight

    check_choice("--method", method, DISTILL_METHODS)
    teacher = ckpt.load_config(teacher_dir)
    if teacher.train.task == "consistency":
        raise ConfigError(f"{teacher_dir} is a consistency student: distil its teacher instead")
    if teacher.train.task not in ("diffusion", "progressive"):
        raise ConfigError(f"{teacher_dir} is a {teacher.train.task} run, not a diffusion model to distil")
    if teacher.data.space == "latent":
        raise ConfigError(f"{teacher_dir} is a latent diffusion run, which ddpm distill does not take yet")
    if teacher.train.task == "progressive" and method != "progressive":
        raise ConfigError(f"{teacher_dir} is a progressive student: it can only be halved further "
                          "(--method progressive); tune its teacher for consistency")  # fmt: skip
    if not (Path(teacher_dir) / ckpt.MODEL).is_file():
        raise ConfigError(f"{teacher_dir} holds no {ckpt.MODEL}: train it first")
    if guide and (method != "progressive" or teacher.train.task != "diffusion"):
        raise ConfigError("--guide guides the first round's teacher of progressive distillation: give "
                          "it with --method progressive and a diffusion run (not a student)")  # fmt: skip
    if guidance is not None and not guide and not teacher.model.num_classes:
        raise ConfigError(f"--guidance: {teacher_dir} is not class-conditional (train it with --cond class, "
                          "or guide it with a weaker run: --guide)")  # fmt: skip
    if guidance is not None and method == "consistency":
        raise ConfigError("--guidance is fixed into progressive students; a consistency student of a "
                          "class-conditional run is guided when it samples (ddpm sample "
                          "--guidance)")  # fmt: skip
    T = teacher.diffusion.timesteps
    if not 1 <= int(to_steps or 1) <= T:
        raise ConfigError(f"--to-steps must lie in 1..T={T}, got {to_steps}")
    w = w_first = 0.0  # the guidance in the student, and the guidance applied to the first teacher
    rounds = 0
    if method == "progressive":
        if teacher.train.task == "progressive":  # a student halved further: its own grid and guidance
            if guidance is not None:
                raise ConfigError(f"--guidance: {teacher_dir} is a progressive student, whose guidance "
                                  f"({teacher.distill.guidance:g}) is fixed in its weights")  # fmt: skip
            if teacher_steps not in (None, teacher.sample.steps):
                raise ConfigError(f"{teacher_dir} samples in {teacher.sample.steps} steps: --teacher-steps "
                                  f"{teacher_steps} is not its grid")  # fmt: skip
            teacher_steps, w = teacher.sample.steps, teacher.distill.guidance
        elif teacher.model.num_classes or guide:
            w = w_first = guidance_weight(guidance, teacher.sample.guidance)
        if guide:
            guide_network(str(teacher_dir), str(guide))  # ConfigError now if the two runs do not mix
        teacher_steps = int(teacher_steps or min(64, T))
        rounds = check_progressive(teacher_steps, int(to_steps or 4), T)
    to_steps = int(to_steps or (4 if method == "progressive" else 1))
    sampler = "ddim" if method == "progressive" else "consistency"
    flags = {
        "train.task": method,
        "train.steps": rounds * round_steps if method == "progressive" else round_steps * CONSISTENCY_STAGES,
        # the student's length is its rounds or stages: not the teacher's epochs or wall-clock budget
        "train.epochs": 0.0,
        "train.max_minutes": 0.0,
        "train.t_sampler": "uniform",  # the rounds' grid steps and the lognormal sigmas come from uniform t
        "train.eval_every": 0,
        "train.eval_steps": to_steps,
        "train.lr": 2e-4,
        "train.warmup_steps": 0,
        "train.lr_schedule": "constant",
        "train.lr_cycle": round_steps if method == "progressive" else 0,  # a decay restarts each round
        "train.ema_decay": 0.995,
        "diffusion.objective": "v" if method == "progressive" else "consistency",
        "sample.sampler": sampler,
        "sample.steps": to_steps,
        "sample.grid": "uniform",
        "sample.eta": 0.0,
        "sample.threshold": 0.0,
        # a progressive student carries its guidance in its weights; a consistency student is guided
        # by the sampler, as its teacher was
        "sample.guidance": 0.0
        if method == "progressive" and (teacher.model.num_classes or guide)
        else teacher.sample.guidance,
        "distill.guide": str(guide or ""),
        "distill.teacher": str(teacher_dir),
        "distill.teacher_objective": teacher.diffusion.objective,
        "distill.teacher_steps": teacher_steps if method == "progressive" else 0,
        "distill.to_steps": to_steps,
        "distill.round_steps": round_steps,
        "distill.guidance": w,
        "distill.teacher_guidance": w_first,
    }
    return teacher.replace(**{**flags, **(overrides or {})})


def check_student_dir(teacher_dir: str | Path, run_dir: str | Path) -> None:
    """ConfigError if the student would be written into its teacher's directory."""
    if Path(run_dir).resolve() == Path(teacher_dir).resolve():
        raise ConfigError(f"-o {run_dir} is the teacher itself: the student needs its own directory")


# ----- both methods: the student starts as the teacher -------------------------------------------------
def start_from_teacher(state) -> None:
    """Load the teacher's (EMA) weights into the model, its EMA and every extra network (a fresh run)."""
    src = Path(state.cfg.distill.teacher) / ckpt.MODEL
    if not src.is_file():
        raise ConfigError(f"the teacher {state.cfg.distill.teacher} holds no {ckpt.MODEL}")
    tensors = load_tensors(src, verify=True)
    shape = stored_shape(tensors, src)
    if shape != tuple(state.data.shape):
        raise ConfigError(f"the teacher was trained on data of shape {shape}, the student's is "
                          f"{tuple(state.data.shape)}")  # fmt: skip
    weights = network_weights(tensors)
    try:
        for net in (state.model, state.ema_model, *state.extras.values()):
            net.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{src} does not fit the student's network: {str(e).splitlines()[0]}") from None


@functools.lru_cache(maxsize=8)
def _process(cfg: DiffusionConfig, objective: str, decoder: str) -> GaussianDiffusion:
    return build_diffusion(dataclasses.replace(cfg, objective=objective), decoder)


# ----- progressive distillation (Salimans & Ho 2022) --------------------------------------------------
def progressive_round(cfg: RunConfig, step: int) -> tuple[int, int]:
    """(round, the student's steps in it) at optimizer step `step`: round r halves teacher_steps r + 1
    times (steps past the last round go on with it)."""
    d = cfg.distill
    rounds = check_progressive(d.teacher_steps, d.to_steps, cfg.diffusion.timesteps)
    r = min(step // d.round_steps, rounds - 1)
    return r, d.teacher_steps >> (r + 1)


def next_round(state) -> None:
    """Before each step: at a round's first step (after the first round) the student (EMA) becomes the
    teacher and the new student's start, and the optimizer's moments are reset (Salimans & Ho 2022,
    Alg. 2); the run's config says the student's current steps, so that a run stopped in any round
    samples on the grid it was trained for."""
    d = state.cfg.distill
    r, n = progressive_round(state.cfg, state.step)
    if state.cfg.sample.steps != n:
        state.cfg = state.cfg.replace(**{"sample.steps": n, "train.eval_steps": n})
    if state.step == 0 or state.step % d.round_steps or state.step // d.round_steps != r:
        return
    ema = state.ema_model.state_dict()
    state.extras["teacher"].load_state_dict(ema)
    state.model.load_state_dict(ema)
    state.opt.state.clear()


def progressive_ladder(diffusion: GaussianDiffusion, n: int) -> torch.Tensor:
    """The teacher's 2N timesteps ascending after -1 (the data): student step k = 1..N goes from
    ladder[2k] via ladder[2k - 1] to ladder[2k - 2], so the student trains at exactly the N steps its
    DDIM sampler visits (`sampling_timesteps(diffusion, N)`, every other one of the 2N)."""
    return torch.tensor([-1, *reversed(sampling_timesteps(diffusion, 2 * n))]).long()


def round_teacher(cfg: RunConfig, r: int) -> tuple[str, float, str]:
    """(objective, guidance, guide) of round r's teacher: the run distilled, guided by
    distill.teacher_guidance (by the weak run distill.guide when there is one: autoguidance), in round 0;
    the previous round's student (already guided: w = 0) after."""
    d = cfg.distill
    first = (d.teacher_objective, d.teacher_guidance, d.guide)
    return first if r == 0 else (cfg.diffusion.objective, 0.0, "")


@functools.lru_cache(maxsize=2)
def guide_network(teacher_dir: str, guide_dir: str, device: str = "cpu") -> torch.nn.Module:
    """The weak run's (EMA) network that guides the first round's teacher, checked against the teacher
    run (`autoguide.load_guide`: ConfigError when they do not mix) and loaded once per process; the
    first round reads both directories (later rounds, whose teacher is a student, need neither)."""
    from ..autoguide import load_guide
    from ..run import load_run

    return load_guide(load_run(teacher_dir, device=device), guide_dir)


def progressive_loss(state, net, x0, t, noise, cond: Cond | None):
    """Alg. 2: from z_t on the student's grid, two DDIM steps of the teacher give z_s; the student's x
    at z_t is pulled towards the x~ whose single DDIM step reaches z_s, weighted max(SNR, 1). The
    first round's teacher is guided by distill.teacher_guidance, classifier-free or by the weak run
    distill.guide (later teachers carry the guidance already).
    The grid step is t's bucket: t uniform over 0..T-1 -> k = t N // T (so the step stays exact to resume)."""
    cfg, T = state.cfg, state.diffusion.num_timesteps
    r, n = progressive_round(cfg, state.step)
    ab_all = torch.cat([state.diffusion.alphas_cumprod, torch.ones(1)]).to(x0.device)  # [-1]: the data
    ladder = progressive_ladder(state.diffusion, n).to(x0.device)
    k = (t * n) // T + 1  # the student step k = 1..N: from ladder[2k] via ladder[2k - 1] to ladder[2k - 2]
    t_hi, t_mid, t_lo = ladder[2 * k], ladder[2 * k - 1], ladder[2 * k - 2]
    ab = lambda i: ab_all[i].view(-1, *[1] * (x0.dim() - 1))  # noqa: E731
    z_t = ab(t_hi).sqrt() * x0 + (1 - ab(t_hi)).sqrt() * noise
    objective, guidance, guide = round_teacher(cfg, r)
    guide_net = guide_network(cfg.distill.teacher, guide, str(x0.device)) if guide and guidance else None
    teacher = Denoiser(state.extras["teacher"], _process(cfg.diffusion, objective, state.diffusion.decoder),
                       clip=state.data.space.clip_range, guidance=guidance, guide=guide_net)  # fmt: skip
    with torch.no_grad():
        z_mid = ddim_step(z_t, teacher(z_t, t_hi, cond).x0, ab(t_hi), ab(t_mid))
        z_s = ddim_step(z_mid, teacher(z_mid, t_mid, cond).x0, ab(t_mid), ab(t_lo))
        target = progressive_target(z_t, z_s, ab(t_hi), ab(t_lo))
    out, _ = state.diffusion.split_output(state.diffusion.model_output(net, z_t, t_hi, cond))
    x_pred = state.diffusion.predict_x0(z_t, t_hi, out.float())
    err = (x_pred - target).flatten(1).pow(2).mean(1)
    return truncated_snr_weight(ab_all[t_hi]) * err


# ----- consistency tuning (ECT, Geng et al. 2024) ------------------------------------------------------
MAX_STAGE = 12  # beyond it t - r < t / 4096: float32 would make r = t (and the weight 1 / (t - r) blow up)


def consistency_loss(state, net, x0, t, noise, cond: Cond | None):
    """d(f(z_t, t), sg f(z_r, r)) / (t - r) with the same noise at both levels (consistency training,
    no teacher calls), t ~ ECT's lognormal over sigma (its quantile at t's position in 0..T-1) and r
    from the curriculum stage = step // round_steps; f is the student's skip / out parameterisation.
    Both calls see the same dropout masks (the target's call runs on a fork of the RNG state)."""
    cfg, diff = state.cfg, state.diffusion
    ac = diff.alphas_cumprod.to(x0.device)
    s_min, s_max = diff.sigma_min, min(SIGMA_MAX, float((1.0 / ac[-1] - 1.0).sqrt()))
    sigma = lognormal_sigma((t.float() + 0.5) / diff.num_timesteps).clamp(s_min, s_max)
    r = consistency_r(sigma, min(state.step // cfg.distill.round_steps, MAX_STAGE), s_min)
    c = huber_c(x0[0].numel(), cfg.distill.huber_c)
    cuda = [x0.device] if x0.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=cuda):
        f_r = _consistency_f(state.model, diff, x0, noise, r, cond)
    f_t = _consistency_f(net, diff, x0, noise, sigma, cond)
    return pseudo_huber(f_t, f_r, c) / (sigma - r).clamp(min=1e-8)


def _consistency_f(net, diff: GaussianDiffusion, x0, noise, sigma, cond) -> torch.Tensor:
    """f at noise level sigma of z = sqrt(ab) (x0 + sigma noise), ab = 1 / (1 + sigma^2)."""
    view = lambda v: v.view(-1, *[1] * (x0.dim() - 1))  # noqa: E731
    ab = view(1.0 / (1.0 + sigma**2))
    z = ab.sqrt() * (x0 + view(sigma) * noise)
    t = timestep_at_sigma(sigma, diff.alphas_cumprod.to(x0.device))
    out, _ = diff.split_output(net(z, t, **(cond or {})).float())
    return consistency_x0(z, out, ab, view(consistency_skip(sigma, diff.sigma_min)))
