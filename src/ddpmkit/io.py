"""Atomic file writes and safetensors I/O. Imports nothing of ddpmkit but its exception types.

Every file is written to a temporary name in the same folder, fsync'ed and renamed (os.replace),
so a kill at any moment leaves either the old file or the new one, never half of one. Tensors are
stored as safetensors only: nothing here ever unpickles a file.

Integrity: every safetensors file we write records, in its own header metadata ("sha256"), the
SHA-256 of its data section (the bytes after the header: all tensor values). Loading recomputes it
and refuses a file whose bytes changed (a flipped bit, a truncation) with CheckpointError, unless
`verify=False`. Kept in the file itself, the digest is written in the same atomic rename as the data.
Check by hand: `tail -c +$((9 + N)) FILE | sha256sum`, N = the header length (first 8 bytes, LE).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, save

from .errors import CheckpointError, OutputError


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (a rename) to disk where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same directory + fsync + os.replace."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


DIGEST = "sha256"  # metadata key: SHA-256 (hex) of the file's data section


def _split(blob: bytes, path: Path) -> tuple[dict, bytes]:
    """A safetensors file's header (JSON) and data section."""
    try:
        n = int.from_bytes(blob[:8], "little")
        if len(blob) < 8 or n > len(blob) - 8:
            raise ValueError("header length beyond the end of the file")
        return json.loads(blob[8 : 8 + n]), blob[8 + n :]
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: not a complete safetensors file ({e})") from None


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """Write tensors (moved to the CPU, made contiguous) as one safetensors file, atomically, with the
    SHA-256 of its data section in its metadata; returns that digest."""
    data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    _, body = _split(save(data, metadata=metadata), path)  # the data section does not depend on metadata
    digest = hashlib.sha256(body).hexdigest()
    atomic_write_bytes(path, save(data, metadata={**(metadata or {}), DIGEST: digest}))
    return digest


def load_tensors(path: Path, *, verify: bool = True) -> dict[str, torch.Tensor]:
    """Read a safetensors file, checking its recorded SHA-256 (files without one are read as they
    are); an unreadable or damaged file raises CheckpointError."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    header, body = _split(blob, path)
    recorded = (header.get("__metadata__") or {}).get(DIGEST)
    if verify and recorded is not None and hashlib.sha256(body).hexdigest() != recorded:
        raise CheckpointError(
            f"{path} is damaged: its SHA-256 differs from the one recorded when it was written "
            "(--no-verify loads it anyway)"
        )
    try:
        return load(blob)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file (header only)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (OSError, SafetensorError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
