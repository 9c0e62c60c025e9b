"""What the benchmark scripts that drive `ddpm` as a user would share: the command, the keys of
`ddpm eval --json` they keep, running a command, and merging a result into OUT/results.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DDPM = [sys.executable, "-m", "ddpmkit.cli"]
KEYS = ("fid", "fid_reference", "precision", "recall", "confident_fraction")


def sh(*cmd: str) -> str:
    """Run a command (echoed first); its stdout, or CalledProcessError."""
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def record(out: Path, name: str, info: dict) -> None:
    """Merge one result into out/results.json."""
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[name] = info
    path.write_text(json.dumps(results, indent=2))
    print(name, json.dumps(info), flush=True)
