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
import stat
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


MAX_JSON_BYTES = 16 * 2**20  # configs, state.json, run notes: far above any the toolkit writes
MAX_TENSOR_BYTES = 2**36  # a safetensors file (64 GiB)


def read_regular(
    path: str | Path, limit: int = MAX_JSON_BYTES, error: type[Exception] = CheckpointError, what: str = ""
) -> bytes:
    """The bytes of `path`, which must be a regular file of at most `limit` bytes: a FIFO, a device
    (/dev/zero), a folder or an oversized file is refused with `error` before anything is read (a
    read of one could block, or never end)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO's open must not block
    except OSError as e:
        raise error(f"cannot read {what}{path}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"cannot read {what}{path}: not a regular file")
        if st.st_size > limit:
            raise error(f"cannot read {what}{path}: {st.st_size:,} bytes, more than the {limit:,} such "
                        "a file may have")  # fmt: skip
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(st.st_size + 1)  # what fstat says, and a byte more to see it grow
        if len(data) > limit:
            raise error(f"cannot read {what}{path}: it grew past {limit:,} bytes while being read")
        return data
    except OSError as e:
        raise error(f"cannot read {what}{path}: {e.strerror or e}") from None
    finally:
        os.close(fd)


def read_json(path: str | Path, error: type[Exception] = CheckpointError, what: str = "") -> object:
    """A JSON file read with `read_regular`'s limits; `error` for anything unreadable ("cannot read
    {what}{path}: ...")."""
    try:
        return json.loads(read_regular(path, MAX_JSON_BYTES, error, what))
    except (ValueError, RecursionError) as e:  # JSONDecodeError, bad UTF-8, nesting too deep
        raise error(f"cannot read {what}{path}: not valid JSON ({str(e)[:200]})") from None


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


DIGEST = "sha256"  # metadata key: SHA-256 (hex) of the file's header (without it) and data section
LEGACY_FORMAT = "ddpmkit-1"  # model files of ddpmkit 0.1, written before digests


def _split(blob: bytes, path: Path) -> tuple[dict, bytes]:
    """A safetensors file's header (a JSON object) and data section."""
    try:
        n = int.from_bytes(blob[:8], "little")
        if len(blob) < 8 or n > len(blob) - 8:
            raise ValueError("header length beyond the end of the file")
        header = json.loads(blob[8 : 8 + n])
        if not isinstance(header, dict) or not isinstance(header.get("__metadata__", {}), dict):
            raise ValueError("its header is not a JSON object of tensors and string metadata")
        return header, blob[8 + n :]
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        why = str(e)[:200]
        raise CheckpointError(f"cannot read {path}: not a complete safetensors file ({why})") from None


def file_digest(header: dict, body: bytes) -> str:
    """SHA-256 of the header (tensor names, dtypes, shapes, offsets, metadata; the digest itself left
    out, keys sorted) and the data: an edit to either changes it."""
    head = dict(header)
    meta = {k: v for k, v in (head.pop("__metadata__", None) or {}).items() if k != DIGEST}
    if meta:
        head["__metadata__"] = meta
    return hashlib.sha256(json.dumps(head, sort_keys=True, separators=(",", ":")).encode() + body).hexdigest()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """Write tensors (moved to the CPU, made contiguous) as one safetensors file, atomically, with the
    SHA-256 of its header and data (`file_digest`) in its metadata; returns that digest."""
    data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header, body = _split(save(data, metadata=metadata), path)  # offsets do not depend on the metadata
    digest = file_digest(header, body)
    atomic_write_bytes(path, save(data, metadata={**(metadata or {}), DIGEST: digest}))
    return digest


def load_tensors(path: Path, *, verify: bool = True, require_digest: bool = True) -> dict[str, torch.Tensor]:
    """Read a safetensors file and check its recorded digest: header and data (files of ddpmkit 0.2:
    the data). A file without one is refused unless it is of ddpmkit 0.1 (or `require_digest` is
    False: a 0.1 checkpoint) or `verify` is False; any damage raises CheckpointError."""
    path = Path(path)
    blob = read_regular(path, MAX_TENSOR_BYTES)
    header, body = _split(blob, path)
    meta = header.get("__metadata__") or {}
    recorded = meta.get(DIGEST)
    if verify and recorded is None and require_digest and meta.get("format") != LEGACY_FORMAT:
        raise CheckpointError(f"{path} has no integrity digest ({DIGEST}), which every file ddpmkit writes "
                              "carries: it was edited, or not written by ddpmkit (--no-verify loads it "
                              "anyway)")  # fmt: skip
    legacy = hashlib.sha256(body).hexdigest()  # ddpmkit 0.2 hashed the data section alone
    if verify and recorded is not None and recorded not in (file_digest(header, body), legacy):
        raise CheckpointError(
            f"{path} is damaged: its SHA-256 differs from the one recorded when it was written "
            "(--no-verify loads it anyway)"
        )
    try:
        return load(blob)
    except (SafetensorError, ValueError, RuntimeError, TypeError, OverflowError) as e:
        raise CheckpointError(f"cannot read {path}: {str(e)[:300]}") from None


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file (header only)."""
    if not Path(path).is_file():  # a FIFO or device would block the reader
        raise CheckpointError(f"cannot read {path}: not a regular file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (OSError, SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot read {path}: {str(e)[:300]}") from None


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def stored_shape(tensors: dict[str, torch.Tensor], where: Path | str) -> tuple[int, ...]:
    """The data shape a model file was trained on (CheckpointError if it records none)."""
    if "data.shape" not in tensors:
        raise CheckpointError(f"{where} is not a ddpmkit model file (no data.shape)")
    return tuple(int(s) for s in tensors["data.shape"].tolist())


def network_weights(tensors: dict[str, torch.Tensor], ema: bool = True) -> dict[str, torch.Tensor]:
    """A model file's network: its EMA weights where it holds them (and `ema`), else the raw ones."""
    return unprefixed("ema" if ema and any(k.startswith("ema.") for k in tensors) else "model", tensors)
