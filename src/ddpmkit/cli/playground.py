"""`ddpm playground`: the local web page (draw points, train, scrub through the diffusion)."""

from __future__ import annotations

from .common import bounded


def add_parser(sub, command) -> None:
    p = command(sub, "playground", "a local web page: draw points, train, scrub through the diffusion")
    p.add_argument("--port", type=bounded(0, 65535), default=8000, help="TCP port of the page")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; 127.0.0.1: this machine only")
    p.add_argument("--runs", default="runs", help="folder whose run directories the images page opens")


def run(args) -> int:
    from ..playground import serve

    serve(args.host, args.port, args.runs)
    return 0
