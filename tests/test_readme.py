"""The README is a test: every shell and Python block of README.md runs, in order, in a fresh
directory laid out like a clone (`../shared` beside it, the test's own `.venv`), as a new user would
paste it. Only budgets are scaled down, each by a marked substitution listed in SUBSTITUTIONS with
its reason; a line that cannot run here is listed in NOT_RUN with the reason. Nothing else of a
block is changed, so a block that fails as written fails here.

The docs pages' commands (the multi-minute studies whose figures those pages report) are parsed,
not run: every `ddpm` line must parse with `ddpm`'s own parser (flags exist, values are valid) and
every `python benchmarks/X.py` line must name a script that exists.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(bash|sh|python)\n(.*?)^```", re.M | re.S)

# (pattern, replacement, why): applied to each command of a block, in this order
SUBSTITUTIONS: list[tuple[str, str, str]] = [
    (
        r"^make demo\b.*$",
        "ddpm train --out runs/dino --overwrite --steps 40",
        "make demo's own recipe (Makefile), 40 steps instead of the preset's 6000",
    ),  # fmt: skip
    (r"--max-minutes 20\b", "--steps 12", "20 minutes of training -> 12 steps"),
    (r"--max-minutes 2\b", "--steps 4", "the weak guide's 2 minutes of training -> 4 steps"),
    (
        r"^(ddpm train-classifier .*?)(\s+#.*)?$",
        r"\1 --epochs 1 --train-images 2000 --test-images 500",
        "the classifier on a 2000-image subset for 1 epoch (~3 min -> ~10 s)",
    ),  # fmt: skip
    (r"(ddpm sample \S+ .*)-n (64|500|1000|2000)\b", r"\1-n 8", "8 samples instead of 64-2000"),
    (
        r"--subset 256\b",
        "--subset 2 --t-stride 20",
        "--nll on 2 test images, one t in 20, instead of 256 exact",
    ),
    (
        r"(--class all) -n 4 (--guidance \S+)",
        r"\1 -n 1 \2",
        "the guidance sweep: 1 sample per class and w, not 4",
    ),
    (r"^(ddpm inpaint .*?)(\s+#.*)?$", r"\1 --steps 20", "RePaint on a 20-step grid instead of 100"),
    (r'train=\{"steps": 2000\}', 'train={"steps": 20}', "Python API: 20 training steps instead of 2000"),
    (r"(\.venv/bin/ddpm playground)\b", r"\1 --port {port}", "a free port instead of 8000"),
    (r"--round-steps \d+", "--round-steps 2", "distillation: 2 optimizer steps a round / stage, not 450-600"),
]
NOT_RUN: dict[str, str] = {
    "make test": "it is the command that runs this test (CI runs it)",
    ".venv/bin/pip install -e '.[playground]'": "installs packages: [playground] is part of [test], "
    "already installed where this test runs",
}
SERVERS = ("ddpm playground",)  # started, asked for its page, stopped
# runs from later blocks that earlier blocks do not write, so must not be there beforehand
TIMEOUT_S = 240  # per command


def blocks(path: Path) -> list[tuple[str, str]]:
    """The fenced (language, text) blocks of a markdown file, in order."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(path.read_text())]


def commands(text: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, blank and comment lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [
        line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def substitute(command: str, port: int) -> str:
    for pattern, repl, _ in SUBSTITUTIONS:
        command = re.sub(pattern, repl.replace("{port}", str(port)), command)
    return command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> tuple[Path, dict]:
    """A folder like a fresh clone: the docs, `.venv` (this interpreter's), ../shared beside it."""
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set DDPMKIT_SHARED_DATA)")
    top = tmp_path_factory.mktemp("readme")
    (top / "shared").symlink_to(SHARED_DATA.parent)
    repo = top / "ddpmkit"
    repo.mkdir()
    (repo / "docs").symlink_to(ROOT / "docs")
    (repo / ".venv").symlink_to(Path(sys.prefix))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DDPMKIT_CACHE": str(top / "cache"), "DDPMKIT_PROGRESS": "lines", "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg"}  # fmt: skip
    return repo, env


def _run(command: str, cwd: Path, env: dict) -> None:
    done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)  # fmt: skip
    assert done.returncode == 0, (
        f"README command failed ({done.returncode}): {command}\n{done.stderr[-3000:]}"
    )


def _serve(command: str, cwd: Path, env: dict, port: int) -> None:
    proc = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    assert r.status == 200 and b"<html" in r.read(2000).lower()
                    return
            except OSError:
                assert proc.poll() is None, f"{command} exited: {proc.stdout.read()[-2000:]}"
                assert time.monotonic() < deadline, f"{command} did not serve its page within 60 s"
                time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_every_readme_block_runs_in_order(clone):
    repo, env = clone
    ran = 0
    for lang, text in blocks(ROOT / "README.md"):
        if lang == "python":
            port = 0
            script = substitute(text, port)
            done = subprocess.run([sys.executable, "-c", script], cwd=repo, env=env, capture_output=True,
                                  text=True, timeout=TIMEOUT_S)  # fmt: skip
            assert done.returncode == 0, f"README Python block failed:\n{script}\n{done.stderr[-3000:]}"
            ran += 1
            continue
        for command in commands(text):
            bare = re.sub(r"\s+#.*$", "", command).strip()
            if bare in NOT_RUN:
                continue
            port = _free_port()
            line = substitute(command, port)
            start = time.perf_counter()
            if any(s in line for s in SERVERS):
                _serve(line, repo, env, port)
            else:
                _run(line, repo, env)
            print(f"{time.perf_counter() - start:6.1f} s  {line}")  # pytest -s: where the time goes
            ran += 1
    assert ran >= 15  # the README's blocks hold at least this many runnable commands


def test_substitutions_each_apply_to_some_readme_line():
    """A substitution that no longer matches means the README changed: update the list."""
    text = (ROOT / "README.md").read_text()
    lines = [c for lang, b in blocks(ROOT / "README.md") for c in (commands(b) if lang != "python" else [b])]
    for pattern, _, why in SUBSTITUTIONS:
        assert any(re.search(pattern, line, re.M) for line in lines), f"unused substitution: {why}"
    for line in NOT_RUN:
        assert line in text, f"NOT_RUN names a line the README no longer has: {line}"


DOC_PAGES = sorted((ROOT / "docs").glob("*.md"))


@pytest.mark.parametrize("page", DOC_PAGES, ids=[p.name for p in DOC_PAGES])
def test_docs_commands_parse(page):
    from ddpmkit.cli import build_parser

    parser = build_parser()
    for lang, text in blocks(page):
        if lang == "python":
            compile(text, str(page), "exec")
            continue
        for command in commands(text):
            if "=" in command.split()[0]:  # a shell variable (S=benchmarks/...)
                continue
            argv = shlex.split(re.sub(r"\s+#.*$", "", command))
            if argv[0] == "ddpm":
                try:
                    parser.parse_args(argv[1:])
                except SystemExit as e:
                    pytest.fail(f"{page.name}: `{command}` does not parse (exit {e.code})")
            elif argv[0] == "python" and argv[1].startswith("benchmarks/"):
                assert (ROOT / argv[1]).is_file(), f"{page.name}: {argv[1]} does not exist"
