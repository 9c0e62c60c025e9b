"""`ddpm playground`: a local web page to draw or pick a 2-D distribution, train on it in seconds,
and scrub through the forward and reverse diffusion; and to sample image runs step by step.
Needs the extra: `pip install 'ddpmkit[playground]'` (Starlette + uvicorn)."""

from __future__ import annotations

import socket
from pathlib import Path

from ..errors import ConfigError, OutputError


def check_port(host: str, port: int) -> None:
    """OutputError when `port` cannot be bound on `host` (busy, or not ours to take)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise OutputError(
                f"cannot serve on {host}:{port}: {e.strerror or e} (pick another --port)"
            ) from None


def serve(host: str = "127.0.0.1", port: int = 8000, runs_dir: str | Path = "runs") -> None:
    """Serve the playground until Ctrl-C."""
    try:
        import uvicorn

        from .app import build_app
    except ImportError as e:
        raise ConfigError(
            f"the playground needs its extra: pip install 'ddpmkit[playground]' ({e.name} missing)"
        ) from None
    if not 0 < port < 65536:
        raise ConfigError(f"--port must lie in 1..65535, got {port}")
    check_port(host, port)
    app = build_app(Path(runs_dir))
    local = host in ("127.0.0.1", "localhost", "::1")
    where = "this machine only; --host 0.0.0.0 to share it" if local else "reachable from other machines"
    print(f"ddpm playground: http://{'localhost' if local else host}:{port}/  ({where})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
