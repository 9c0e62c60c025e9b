"""`ddpm export`: a run in another library's format (diffusers: a DDPMPipeline folder)."""

from __future__ import annotations

EXPORTERS = ("diffusers",)  # --format choices; each maps to a writer in ddpmkit.interop


def add_parser(sub, command) -> None:
    p = command(sub, "export", "write a run in another library's format (a diffusers DDPMPipeline folder)")
    p.add_argument("run_dir", help="run directory (its network: --model.kind diffusers_unet)")
    p.add_argument("out", help="the folder to write (DDPMPipeline.from_pretrained(OUT) loads it)")
    p.add_argument("--format", choices=EXPORTERS, default="diffusers", help="what to write")
    p.add_argument("--overwrite", action="store_true", help="replace a folder ddpmkit exported earlier")


def run(args) -> int:
    from ..interop.diffusers import export_run

    out = export_run(args.run_dir, args.out, overwrite=args.overwrite)
    print(f"wrote {out} (DDPMPipeline: model_index.json, unet/, scheduler/, ddpmkit.json); load it with "
          f"diffusers.DDPMPipeline.from_pretrained({str(out)!r})")  # fmt: skip
    return 0
