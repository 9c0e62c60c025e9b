"""interop/diffusers.py and the diffusers_unet model kind, against the real `diffusers` package: folders
written by diffusers' own save_pretrained import exactly, and exported runs load in DDPMPipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from ddpmkit.cli import main  # noqa: E402
from ddpmkit.config import RunConfig  # noqa: E402
from ddpmkit.interop.diffusers import (  # noqa: E402
    InteropError,
    diffusers_betas,
    diffusion_section,
    export_run,
    import_pipeline,
    scheduler_config,
)
from ddpmkit.run import generate, load_run  # noqa: E402
from ddpmkit.schedules import schedule_betas  # noqa: E402

TINY = dict(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
            norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8)  # fmt: skip


def save_pipeline(path, scheduler=None, seed=0, **unet_kw):
    """A tiny DDPMPipeline with random weights, written by diffusers itself."""
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(**{**TINY, **unet_kw})
    with torch.no_grad():  # random, non-trivial weights everywhere (diffusers zero-inits some outputs)
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pipe = diffusers.DDPMPipeline(
        unet=unet, scheduler=scheduler or diffusers.DDPMScheduler(num_train_timesteps=1000)
    )
    pipe.save_pretrained(path)
    return pipe


@pytest.mark.parametrize(
    "kw",
    [
        dict(beta_schedule="linear"),
        dict(beta_schedule="scaled_linear"),
        dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        dict(beta_schedule="squaredcos_cap_v2"),
        dict(beta_schedule="sigmoid", num_train_timesteps=200),
        dict(beta_schedule="linear", num_train_timesteps=100),
        dict(trained_betas=np.linspace(1e-3, 0.2, 50).tolist(), num_train_timesteps=50),
    ],
)
def test_schedules_map_exactly(kw):
    sched = diffusers.DDPMScheduler(**kw)
    ours = diffusers_betas(dict(sched.config))
    assert np.array_equal(ours, sched.betas.double().numpy())  # the same float32 numbers
    diffusion, _, _ = diffusion_section(dict(sched.config), 3, 3)
    cfg = RunConfig.from_dict({"diffusion": diffusion})
    # a named ddpmkit schedule only where it gives those betas to float32 rounding
    np.testing.assert_allclose(schedule_betas(cfg.diffusion), ours, rtol=1e-6, atol=0)


@pytest.mark.parametrize("pred,objective", [("epsilon", "eps"), ("sample", "x0"), ("v_prediction", "v")])
def test_prediction_types_map_both_ways(pred, objective):
    sched = diffusers.DDPMScheduler(prediction_type=pred, beta_schedule="squaredcos_cap_v2")
    diffusion, _, _ = diffusion_section(dict(sched.config), 3, 3)
    assert diffusion["objective"] == objective
    cfg = RunConfig.from_dict({"diffusion": diffusion})
    back = diffusers.DDPMScheduler(**scheduler_config(cfg))
    assert back.config.prediction_type == pred
    assert torch.equal(back.betas, sched.betas)


def test_export_writes_betas_where_ddpmkit_rescales_them():
    for schedule, T in (
        ("linear", 1000),
        ("linear", 100),
        ("quadratic", 250),
        ("sigmoid", 1000),
        ("cosine", 64),
    ):
        cfg = RunConfig.from_dict({"diffusion": {"schedule": schedule, "timesteps": T}})
        sched = diffusers.DDPMScheduler(**scheduler_config(cfg))
        np.testing.assert_allclose(sched.betas.double().numpy(), schedule_betas(cfg.diffusion), rtol=1e-6)


def test_import_model_output_equals_the_unet(tmp_path):
    pipe = save_pipeline(tmp_path / "pipe")
    result = import_pipeline(tmp_path / "pipe", tmp_path / "run")
    run = load_run(result.run_dir)  # verifies the integrity hash written with the weights
    assert run.cfg.model.kind == "diffusers_unet" and run.data_shape == (3, 8, 8)
    x, t = torch.randn(5, 3, 8, 8), torch.tensor([0, 10, 500, 999, 3])
    with torch.no_grad():
        np.testing.assert_allclose(run.model(x, t), pipe.unet(x, t).sample, atol=1e-5, rtol=0)
    assert json.loads((tmp_path / "run" / "imported.json").read_text())["pipeline"] == "DDPMPipeline"


def test_ddpm_sampler_reproduces_ddpm_pipeline(tmp_path):
    """Same weights, same seed: DDPMPipeline and ddpmkit's `ddpm` sampler draw the same noise in the same
    order (x_T, then one draw per step but the last). They differ only by float rounding (diffusers
    computes the step coefficients in float32 from float32 alpha_bar, ddpmkit in float64), which the
    1000 steps carry into the result: we ask for the same 8-bit image, max error < 1/4 of a level."""
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    pipe = save_pipeline(tmp_path / "pipe", sched)
    import_pipeline(tmp_path / "pipe", tmp_path / "run")
    theirs = pipe(batch_size=4, generator=torch.Generator().manual_seed(3), num_inference_steps=1000,
                  output_type="np").images  # fmt: skip
    run = load_run(tmp_path / "run")
    x, _ = generate(run, 4, seed=3, sampler="ddpm", steps=None, progress=False)
    ours = ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert np.abs(ours - theirs).max() < 0.25 / 255


def test_export_then_from_pretrained_gives_the_same_outputs(tmp_path):
    save_pipeline(
        tmp_path / "pipe",
        diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"),
    )
    import_pipeline(tmp_path / "pipe", tmp_path / "run")
    out = export_run(tmp_path / "run", tmp_path / "export")
    pipe = diffusers.DDPMPipeline.from_pretrained(out)
    run = load_run(tmp_path / "run")
    x, t = torch.randn(3, 3, 8, 8), torch.tensor([1, 400, 900])
    with torch.no_grad():
        np.testing.assert_allclose(run.model(x, t), pipe.unet(x, t).sample, atol=1e-6, rtol=0)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    np.testing.assert_allclose(
        pipe.scheduler.betas.double().numpy(), run.diffusion.betas.double().numpy(), rtol=1e-6
    )
    # and ddpmkit reads its own export back with the run's config (ddpmkit.json)
    back = import_pipeline(out, tmp_path / "again")
    assert back.cfg == run.cfg


def test_class_embedding_and_null_label(tmp_path):
    save_pipeline(tmp_path / "pipe", num_class_embeds=4)
    plain = import_pipeline(tmp_path / "pipe", tmp_path / "run")
    assert plain.cfg.model.num_classes == 4 and any("null label" in n for n in plain.notes)
    with_null = import_pipeline(tmp_path / "pipe", tmp_path / "run2", null_label=True)
    assert with_null.cfg.model.num_classes == 3
    run = load_run(tmp_path / "run2")
    x, _ = generate(run, 2, seed=0, steps=4, cond={"y": torch.tensor([0, 2])}, guidance=1.0, progress=False)
    assert torch.isfinite(x).all()


def test_train_diffusers_unet_and_export(tmp_path):
    """`ddpm train --model.kind diffusers_unet` trains with ddpmkit's trainer; the run exports."""
    run = tmp_path / "run"
    rc = main(["train", "--dataset", "digits", "--model.kind", "diffusers_unet",
               "--model.diffusers_unet.block_out_channels", "16,32",
               "--model.diffusers_unet.down_block_types", "DownBlock2D,AttnDownBlock2D",
               "--model.diffusers_unet.up_block_types", "AttnUpBlock2D,UpBlock2D",
               "--model.diffusers_unet.norm_num_groups", "8", "--steps", "3", "--batch-size", "8",
               "-o", str(run), "--no-report", "-q"])  # fmt: skip
    assert rc == 0
    assert main(["export", str(run), "--format", "diffusers", str(tmp_path / "out")]) == 0
    pipe = diffusers.DDPMPipeline.from_pretrained(tmp_path / "out")
    images = pipe(batch_size=1, num_inference_steps=3, output_type="np").images
    assert images.shape == (1, 8, 8, 1)
    # back into ddpmkit with the run's own config (its image size unset: the dataset's own)
    assert main(["import", str(tmp_path / "out"), "-o", str(tmp_path / "back")]) == 0
    assert load_run(tmp_path / "back").data_shape == (1, 8, 8)


def bad_folder(tmp_path, what):
    root = tmp_path / "bad"
    save_pipeline(root)
    if what == "no_index":
        (root / "model_index.json").unlink()
    elif what == "no_unet_config":
        (root / "unet" / "config.json").unlink()
    elif what == "bin_only":
        w = root / "unet" / "diffusion_pytorch_model.safetensors"
        w.rename(w.with_name("diffusion_pytorch_model.bin"))
    elif what == "scheduler":
        p = root / "scheduler" / "scheduler_config.json"
        p.write_text(json.dumps({**json.loads(p.read_text()), "_class_name": "EulerDiscreteScheduler"}))
    elif what == "block":
        p = root / "unet" / "config.json"
        d = json.loads(p.read_text())
        p.write_text(json.dumps({**d, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"]}))
    elif what == "weights":
        p = root / "unet" / "config.json"
        p.write_text(json.dumps({**json.loads(p.read_text()), "layers_per_block": 2}))
    return root


@pytest.mark.parametrize(
    "what,words",
    [("no_index", "model_index.json"), ("no_unet_config", "unet/config.json"), ("bin_only", "pickle"),
     ("scheduler", "EulerDiscreteScheduler"), ("block", "CrossAttnDownBlock2D"), ("weights", "do not fit")],
)  # fmt: skip
def test_bad_folders_one_line_exit_2(tmp_path, capsys, what, words):
    root = bad_folder(tmp_path, what)
    assert main(["import", str(root), "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_export_refuses_ddpmkits_own_unet(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--image-size", "8", "--steps", "2", "--batch-size", "4",
                 "-o", str(run), "--no-report", "-q"]) == 0  # fmt: skip
    assert main(["export", str(run), "--format", "diffusers", str(tmp_path / "out")]) == 2
    assert "diffusers_unet" in capsys.readouterr().err
    with pytest.raises(InteropError):
        export_run(run, tmp_path / "out")


@pytest.fixture(scope="module")
def imported_digits(tmp_path_factory):
    """A tiny class-conditional 8x8 grayscale pipeline (4 labels, the last the null label), imported."""
    root = tmp_path_factory.mktemp("digits")
    sched = diffusers.DDPMScheduler(num_train_timesteps=100)
    save_pipeline(root / "pipe", sched, in_channels=1, out_channels=1, num_class_embeds=4)
    assert (
        main(["import", str(root / "pipe"), "-o", str(root / "run"), "--dataset", "digits", "--null-label"])
        == 0
    )
    return root / "run"


def test_every_command_works_on_an_imported_run(imported_digits, tmp_path):
    run = str(imported_digits)
    for sampler in ("ddpm", "ddim", "dpm++2m-sde", "unipc"):
        out = str(tmp_path / f"{sampler}.npz")
        assert main(["sample", run, "-n", "3", "--sampler", sampler, "--steps", "4", "--out", out, "-q"]) == 0
        assert np.load(out)["arr_0"].shape == (3, 8, 8, 1)
    out = str(tmp_path / "guided.npz")
    assert (
        main(
            [
                "sample",
                run,
                "--class",
                "0,2",
                "--guidance",
                "2",
                "-n",
                "2",
                "--steps",
                "3",
                "--out",
                out,
                "-q",
            ]
        )
        == 0
    )
    assert main(["eval", "--nll", run, "--subset", "4", "--t-stride", "25", "-q"]) == 0
    from PIL import Image

    img = str(tmp_path / "in.png")
    Image.fromarray((np.arange(64, dtype=np.uint8) * 4).reshape(8, 8)).save(img)
    assert main(["inpaint", run, "--image", img, "--mask", "left", "--steps", "4", "--resample", "2",
                 "--jump-length", "2", "--out", str(tmp_path / "o.png"), "-q"]) == 0  # fmt: skip
    done = np.asarray(Image.open(tmp_path / "o.png"))
    assert np.array_equal(done[:, 4:], np.asarray(Image.open(img))[:, 4:])
    assert (
        main(["edit", run, "--image", img, "--strength", "0.5", "--out", str(tmp_path / "e.png"), "-q"]) == 0
    )
    assert (
        main(["interpolate", run, "--frames", "3", "--steps", "3", "--out", str(tmp_path / "i.png"), "-q"])
        == 0
    )
    assert main(["info", run]) == 0


def test_playground_lists_and_draws_an_imported_run(imported_digits):
    from ddpmkit.playground import views

    listed = views.list_runs(imported_digits.parent)
    assert [r["path"] for r in listed] == [str(imported_digits)]
    out = views.image_trajectory(load_run(imported_digits), 2, "ddim", 3, "1", 1.0)
    assert len(out["x0"]) >= 2


def test_a_class_embedding_without_null_label_needs_labels(tmp_path, capsys):
    save_pipeline(tmp_path / "pipe", num_class_embeds=3)
    assert main(["import", str(tmp_path / "pipe"), "-o", str(tmp_path / "run")]) == 0
    out = str(tmp_path / "s.npz")
    assert main(["sample", str(tmp_path / "run"), "-n", "2", "--steps", "2", "--out", out, "-q"]) == 2
    assert "--class" in capsys.readouterr().err
    flags = ["--class", "1", "--guidance", "1", "-n", "2", "--steps", "2", "--out", out, "-q"]
    assert main(["sample", str(tmp_path / "run"), *flags]) == 2
    assert "null label" in capsys.readouterr().err
    assert (
        main(["sample", str(tmp_path / "run"), "--class", "1", "-n", "2", "--steps", "2", "--out", out, "-q"])
        == 0
    )
    # a weak run guides in place of the null label (autoguidance): no null label needed
    guided = ["--guide", str(tmp_path / "run"), "--overwrite"]
    assert main(["sample", str(tmp_path / "run"), *flags, *guided]) == 0


def test_import_refuses_what_does_not_map(tmp_path, capsys):
    save_pipeline(tmp_path / "learned", diffusers.DDPMScheduler(variance_type="learned"), out_channels=6)
    assert main(["import", str(tmp_path / "learned"), "-o", str(tmp_path / "r1")]) == 2
    assert "learned_range" in capsys.readouterr().err
    assert main(["import", "someone/some-model", "-o", str(tmp_path / "r2")]) == 2
    assert "--download" in capsys.readouterr().err
    assert main(["import", str(tmp_path / "learned"), "-o", str(tmp_path / "r1"), "--download"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1  # offline: one line


def test_a_ddim_pipeline_folder_imports(tmp_path):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**TINY)
    sched = diffusers.DDIMScheduler(
        beta_schedule="scaled_linear", prediction_type="v_prediction", steps_offset=1
    )
    diffusers.DDIMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp_path / "ddim")
    result = import_pipeline(tmp_path / "ddim", tmp_path / "run")
    assert result.cfg.diffusion.objective == "v" and result.cfg.diffusion.schedule == "quadratic"
    assert any("steps_offset" in n for n in result.notes)
    x, _ = generate(load_run(tmp_path / "run"), 2, sampler="ddim", steps=5, progress=False)
    assert x.shape == (2, 3, 8, 8) and torch.isfinite(x).all()
