"""Train and sample a peer library's DDPM on MNIST or an image folder for a wall-clock budget (runs
in the peers' virtualenv, never imports ddpmkit). Used by bench_peers.py; see ../shared/peers/README.md.

    python peer_train.py --lib diffusers|lucidrains --data-dir DIR --minutes 5 -n 500 --steps 50 \
        --sampler ddpm|ddim --out X.npz
    python peer_train.py --lib diffusers --folder TRAIN_DIR ...   # RGB images, alpha over white
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch


def load_mnist(data_dir: str) -> torch.Tensor:
    """Train images as float (N, 1, 28, 28) in [0, 1] from the IDX file."""
    raw = gzip.decompress(Path(data_dir, "train-images-idx3-ubyte.gz").read_bytes())
    return (
        torch.from_numpy(np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 1, 28, 28).copy()).float() / 255
    )


def load_folder(root: str) -> torch.Tensor:
    """Every image under `root` (recursively) as float (N, 3, S, S) in [0, 1], alpha composited over
    white (as ddpmkit's folder source does by default); they must share one square size."""
    from PIL import Image

    files = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    arrays = []
    for f in files:
        im = Image.open(f)
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        arrays.append(np.asarray(Image.alpha_composite(white, rgba).convert("RGB")))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def diffusers_model(size: int = 28, channels: int = 1):
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

    model = UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        norm_num_groups=32,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    )
    sched = DDPMScheduler(num_train_timesteps=1000)

    def loss_fn(net, x01):
        x0 = x01 * 2 - 1
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (len(x0),))
        return torch.nn.functional.mse_loss(net(sched.add_noise(x0, noise, t), t).sample, noise)

    @torch.inference_mode()
    def sample(net, n, steps, sampler, seed):
        # DDPMScheduler with S < T inference steps is ancestral sampling on the respaced chain
        cls = DDIMScheduler if sampler == "ddim" else DDPMScheduler
        sch = cls.from_config(sched.config)
        sch.set_timesteps(steps)
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, channels, size, size, generator=g)
        for t in sch.timesteps:
            out = net(x, t).sample
            x = (sch.step(out, t, x) if sampler == "ddim" else sch.step(out, t, x, generator=g)).prev_sample
        return (x.clamp(-1, 1) + 1) / 2

    def save(net, out_dir):  # a DDPMPipeline folder, as diffusers' train_unconditional.py writes it
        from diffusers import DDPMPipeline

        DDPMPipeline(unet=net, scheduler=sched).save_pretrained(out_dir)

    model.save_pretrained_pipeline = save
    return model, loss_fn, sample


def lucidrains_model():
    try:
        import torchvision  # noqa: F401
    except Exception:  # empty placeholders: only its Trainer/Dataset use torchvision (README)
        for name in ("torchvision", "torchvision.transforms", "torchvision.utils"):
            sys.modules[name] = types.ModuleType(name)
        sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
        sys.modules["torchvision"].utils = sys.modules["torchvision.utils"]
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet

    holder = {}

    def build():
        unet = Unet(dim=32, dim_mults=(1, 2, 2), channels=1)
        holder["diff"] = GaussianDiffusion(
            unet, image_size=28, timesteps=1000, objective="pred_noise", beta_schedule="linear"
        )
        return holder["diff"]

    def loss_fn(net, x01):
        return net(x01)

    @torch.inference_mode()
    def sample(net, n, steps, sampler, seed):
        # its DDIM sampler with eta = 1 is ancestral DDPM sampling on the respaced chain
        net.sampling_timesteps, net.is_ddim_sampling = steps, True
        net.ddim_sampling_eta = 1.0 if sampler == "ddpm" else 0.0
        torch.manual_seed(seed)
        return net.sample(batch_size=n)

    return build(), loss_fn, sample


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lib", choices=("diffusers", "lucidrains"), required=True)
    p.add_argument("--data-dir", help="MNIST's IDX files")
    p.add_argument("--folder", help="an image folder instead of MNIST (diffusers only)")
    p.add_argument("--minutes", type=float, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("-n", type=int, default=500)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    p.add_argument("--save-pretrained", metavar="DIR", help="diffusers only: also save the EMA model as a "
                   "DDPMPipeline folder (save_pretrained, safetensors) for `ddpm import`")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if (args.folder or args.save_pretrained) and args.lib != "diffusers":
        p.error("--folder / --save-pretrained: diffusers only")
    data = load_folder(args.folder) if args.folder else load_mnist(args.data_dir)
    shape = dict(size=data.shape[-1], channels=data.shape[1])
    net, loss_fn, sample = diffusers_model(**shape) if args.lib == "diffusers" else lucidrains_model()
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr)
    params = sum(p.numel() for p in net.parameters())
    g, steps, t0 = torch.Generator().manual_seed(0), 0, time.perf_counter()
    while time.perf_counter() - t0 < 60 * args.minutes:
        x = data[torch.randint(0, len(data), (args.batch,), generator=g)]
        loss = loss_fn(net, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        with torch.no_grad():  # EMA of parameters, as ddpmkit does (decay 0.995, warmed up)
            d = min(0.995, (1 + steps) / (10 + steps))
            for e, q in zip(ema.parameters(), net.parameters(), strict=True):
                e.lerp_(q, 1 - d)
        steps += 1
    train_s = time.perf_counter() - t0
    if args.save_pretrained:
        net.save_pretrained_pipeline(ema, args.save_pretrained)
    if args.n <= 0:  # -n 0: train (and save) only
        return
    t1 = time.perf_counter()
    chunks = [min(250, args.n - i) for i in range(0, args.n, 250)]  # a fresh seed per chunk
    imgs = torch.cat([sample(ema, k, args.steps, args.sampler, seed) for seed, k in enumerate(chunks)])
    sample_s = time.perf_counter() - t1
    arr = (imgs.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.savez(args.out, arr_0=arr)
    info = {
        "lib": args.lib,
        "params": params,
        "train_steps": steps,
        "train_seconds": train_s,
        "train_images_per_s": steps * args.batch / train_s,
        "sample_s_per_image": sample_s / args.n,
        "sampler": f"{args.sampler.upper()} {args.steps} steps",
        "torch": torch.__version__,
    }
    Path(args.out).with_suffix(".json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info))


if __name__ == "__main__":
    main()
