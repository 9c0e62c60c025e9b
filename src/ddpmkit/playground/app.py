"""The playground's web app (Starlette): the page, and a small JSON API that routes to `views` and
`jobs`. Bad input answers 400 with {"error": one line}; the server keeps serving whatever happens."""

from __future__ import annotations

import contextlib
import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..config import DISTILL_METHODS, SAMPLERS, SCHEDULES
from ..data.toy2d import DATASAURUS, POINT_DATASETS
from ..errors import ConfigError, DdpmkitError
from . import views
from .jobs import Jobs

STATIC = Path(__file__).parent / "static"
DISTILL_ROUND_STEPS = 500  # optimizer steps per round / stage of a points student (seconds on a CPU)
# pseudo-Huber c of consistency students of 2-D points: SW1 ratio 1.27 against 1.43 at iCT's c, 2 calls
POINTS_HUBER_C = 0.05  # (docs/distillation.md)


class BodyTooLarge(ConfigError):
    """A request body over MAX_BODY bytes (answered 413)."""


def _number(body: dict, name: str, default: float, lo: float, hi: float, kind=int) -> Any:
    """body[name] as a number in [lo, hi] (ConfigError naming the field otherwise)."""
    try:
        value = kind(body.get(name, default))
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name} must be a number") from None
    if not (isinstance(value, int) or math.isfinite(value)) or not lo <= value <= hi:
        raise ConfigError(f"{name} must lie in [{lo}, {hi}], got {value}")
    return value


MAX_BODY = 1 << 20  # bytes of a request body (drawn points, a CSV): 1 MiB
MAX_LOADED = 4  # image runs kept loaded by the images page (least recently used dropped)


def build_app(runs_dir: Path) -> Starlette:
    jobs = Jobs()
    loaded: OrderedDict[Path, Any] = OrderedDict()

    def points_run():
        job = jobs.job
        if job is None or job.state != "done":
            raise ConfigError("train a model first")
        return job.run

    def train_cfg(body: dict):
        from ..api import config_for

        source = body.get("source", "dataset")
        if source == "drawn":
            dataset = str(jobs.points_file(body.get("points") or []))
        elif source == "csv":
            dataset = str(jobs.csv_file(str(body.get("csv") or "")))
        else:
            dataset = str(body.get("dataset", "dino"))
            if dataset not in POINT_DATASETS + DATASAURUS:
                raise ConfigError(f"unknown dataset {dataset!r}")
        schedule = str(body.get("schedule", "linear"))
        if schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {schedule!r}")
        return config_for("points", {
            "data.dataset": dataset, "diffusion.schedule": schedule,
            "diffusion.timesteps": _number(body, "T", 250, 10, 1000),
            "model.mlp.hidden": _number(body, "width", 256, 16, 512),
            "train.steps": _number(body, "steps", 4000, 50, 20000),
            "train.log_every": 100, "train.threads": 1,  # small MLPs: 2 threads stall on a shared CPU
            "sample.steps": min(50, _number(body, "T", 250, 10, 1000)),
        })  # fmt: skip

    async def page(request: Request):
        return FileResponse(STATIC / "index.html")

    async def info(request: Request):
        return JSONResponse({"datasets": list(dict.fromkeys(POINT_DATASETS + DATASAURUS)),
                             "samplers": list(SAMPLERS), "schedules": list(SCHEDULES)})  # fmt: skip

    async def train(request: Request):
        body = await _json(request)
        job = jobs.start(await run_in_threadpool(train_cfg, body))
        return JSONResponse(job.status())

    def distill_cfg(body: dict):
        """A student of the trained points model: consistency (1 call) or progressive (to 1, 2 or 4)."""
        from ..training.distill import student_config

        teacher, method = points_run(), str(body.get("method", "consistency"))
        if method not in DISTILL_METHODS:
            raise ConfigError(f"unknown method {method[:50]!r}; choose {', '.join(DISTILL_METHODS)}")
        if teacher.cfg.train.task != "diffusion":
            raise ConfigError("this model is a student already: train a new model to distil")
        to = _number(body, "to_steps", 1 if method == "consistency" else 2, 1, 4)
        if method == "progressive" and teacher.diffusion.num_timesteps < 64:
            raise ConfigError("progressive distillation starts from 64 DDIM steps: train with T >= 64")
        return student_config(
            teacher.run_dir,
            method,
            to_steps=to,
            teacher_steps=64 if method == "progressive" else None,
            round_steps=_number(body, "round_steps", DISTILL_ROUND_STEPS, 10, 5000),
            overrides={"train.threads": 1, "train.log_every": 100, "distill.huber_c": POINTS_HUBER_C},
        )

    async def distill(request: Request):
        body = await _json(request)
        job = jobs.start(await run_in_threadpool(distill_cfg, body))
        return JSONResponse(job.status())

    async def status(request: Request):
        return JSONResponse(jobs.job.status() if jobs.job else {"state": "idle"})

    async def cancel(request: Request):
        jobs.cancel()
        return JSONResponse({"ok": True})

    def at_timestep(view):
        """An endpoint GET ?t=... answering view(points run, t): the forward process, the field."""

        async def endpoint(request: Request):
            t = _number(dict(request.query_params), "t", 0, 0, 999)
            return JSONResponse(await run_in_threadpool(view, points_run(), t))

        return endpoint

    async def reverse(request: Request):
        body = await _json(request)
        run = points_run()
        sampler, steps = _sampler(body), _number(body, "steps", 50, 1, 1000)
        return JSONResponse(await run_in_threadpool(views.reverse, run, sampler, steps))

    async def distance(request: Request):
        body = await _json(request)
        run = points_run()
        return JSONResponse(
            await run_in_threadpool(views.distance, run, _sampler(body), _number(body, "steps", 50, 1, 1000))
        )

    async def runs(request: Request):
        return JSONResponse(
            {"root": str(runs_dir), "runs": await run_in_threadpool(views.list_runs, runs_dir)}
        )

    async def images(request: Request):
        body = await _json(request)

        def work():
            from ..run import load_run

            path = listed_run(runs_dir, body.get("run"))
            if path not in loaded:
                run = load_run(path)
                if run.space.data_kind != "images":
                    raise ConfigError(f"{path} is a {run.space.name} run; the images page opens image runs")
                loaded[path] = run
                while len(loaded) > MAX_LOADED:
                    loaded.popitem(last=False)
            loaded.move_to_end(path)
            g = body.get("guidance")
            guidance = None if g in (None, "") else _number(body, "guidance", 0, -10, 50, float)
            # autoguidance: a weaker run of the same folder, one the page lists too
            guide = str(listed_run(runs_dir, body["guide"])) if body.get("guide") else ""
            n, steps = _number(body, "n", 16, 1, 64), _number(body, "steps", 20, 1, 1000)
            return views.image_trajectory(
                loaded[path], n, _sampler(body), steps, body.get("class"), guidance, guide=guide
            )

        return JSONResponse(await run_in_threadpool(work))

    async def user_error(request: Request, exc: Exception):
        return JSONResponse({"error": str(exc)}, status_code=413 if isinstance(exc, BodyTooLarge) else 400)

    async def server_error(request: Request, exc: Exception):
        return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=500)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        jobs.close()

    routes = [
        Route("/", page), Route("/api/info", info), Route("/api/train", train, methods=["POST"]),
        Route("/api/distill", distill, methods=["POST"]),
        Route("/api/status", status), Route("/api/cancel", cancel, methods=["POST"]),
        Route("/api/forward", at_timestep(views.forward)), Route("/api/reverse", reverse, methods=["POST"]),
        Route("/api/field", at_timestep(views.field)), Route("/api/distance", distance, methods=["POST"]),
        Route("/api/runs", runs), Route("/api/images", images, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]  # fmt: skip
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={DdpmkitError: user_error, Exception: server_error})  # fmt: skip
    app.state.jobs = jobs
    return app


def listed_run(runs_dir: Path, name: Any) -> Path:
    """The run directory `name` if it is one the images page lists (under --runs), else ConfigError
    that says the same whether or not such a path exists elsewhere."""
    root = Path(runs_dir).resolve()
    try:
        path = Path(str(name or "")).resolve()
    except (OSError, RuntimeError, ValueError):
        path = None
    if path is None or not (path == root or path.parent == root) or not path.is_dir():
        raise ConfigError(f"no image run {str(name)[:200]!r} under {runs_dir} (the runs /api/runs lists)")
    return path


async def _json(request: Request) -> dict:
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > MAX_BODY:
        raise BodyTooLarge(f"the request body may have at most {MAX_BODY} bytes")
    data = b""
    async for chunk in request.stream():  # a body without (or with a false) length stops at the limit too
        data += chunk
        if len(data) > MAX_BODY:
            raise BodyTooLarge(f"the request body may have at most {MAX_BODY} bytes")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        raise ConfigError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise ConfigError("the request body must be a JSON object")
    return body


def _sampler(body: dict) -> str:
    name = str(body.get("sampler", "dpm++2m-sde"))
    SAMPLERS.check(name)
    return name
