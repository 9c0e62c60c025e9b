"""Output policy of the commands that write files (`ddpm sample`, `inpaint`, `edit`, `interpolate`):
every path a command will write is claimed up front, before any work, so that a refusal costs nothing
and nothing already on disk is lost.

A path is refused when its folder does not exist, when it is a folder or not a regular file (a
device, a pipe), when it is one of a run directory's own files (`config.json`, `model.safetensors`,
`checkpoints/...`, the report's pictures: writing there would destroy the run), and when it exists
and `overwrite` is not given.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from pathlib import Path

from .checkpoint import CKPT_DIR, CONFIG, MODEL, RUN_FILES
from .errors import OutputError

LOSSLESS = (".png", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".tga")


def check_image_output(path: Path, *, lossless: bool = False, npz: bool = False) -> None:
    """OutputError, before any work, unless PIL can write `path`'s extension (and without loss where
    asked: JPEG and WebP change pixels); `npz` also allows a .npz of arrays."""
    from PIL import Image

    ext = Path(path).suffix.lower()
    if npz and ext == ".npz":
        return
    writable = {e for e, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}
    if ext not in writable:
        raise OutputError(f"cannot write {path}: {ext or 'no extension'} is not an image format PIL writes "
                          "(use .png)")  # fmt: skip
    if lossless and ext not in LOSSLESS:
        raise OutputError(f"{path}: {ext} is lossy and would change the pixels kept bit for bit; use .png")


def claim(paths: Iterable[Path], *, overwrite: bool = False) -> list[Path]:
    """Check every output path (OutputError on the first refused); returns them as Paths."""
    paths = [Path(p) for p in paths]
    try:
        if len({p.resolve() for p in paths}) != len(paths):
            raise OutputError(f"two outputs share one name: {', '.join(map(str, paths))}")
        for path in paths:
            _check(path, overwrite)
    except OSError as e:  # a name too long, a loop of links, a folder we may not read
        raise OutputError(f"cannot write {str(e.filename or paths[0])[:200]}: {e.strerror or e}") from None
    return paths


def _check(path: Path, overwrite: bool) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: folder {parent} does not exist")
    run_dir = owning_run_dir(path)
    if run_dir is not None:
        raise OutputError(
            f"{path} is a file of the run directory {run_dir}: writing it would destroy the run; "
            "choose another name"
        )
    if not path.exists() and not path.is_symlink():
        return
    mode = path.stat().st_mode if path.exists() else 0
    if stat.S_ISDIR(mode):
        raise OutputError(f"cannot write {path}: it is a folder")
    if not stat.S_ISREG(mode):
        raise OutputError(f"cannot write {path}: it is not a regular file")
    if not overwrite:
        raise OutputError(f"{path} exists: pass --overwrite to replace it, or choose another name")


def owning_run_dir(path: Path) -> Path | None:
    """The run directory (a folder with config.json and weights or checkpoints) whose own file
    `path` is (directly, or inside its checkpoints/), else None."""
    path = Path(path).absolute()
    for folder in path.parents:
        is_run = (folder / CONFIG).is_file() and ((folder / MODEL).exists() or (folder / CKPT_DIR).is_dir())
        if is_run and path.parts[len(folder.parts)] in RUN_FILES:  # `folder`'s entry that holds `path`
            return folder
    return None


def derived(out: Path, suffix: str) -> Path:
    """A picture's (or animation's) name beside the main output: OUT.npz -> OUT{suffix}."""
    return out.with_name(out.stem + suffix)
