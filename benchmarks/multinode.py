"""Two-node training on one machine, with a rank killed mid-run and torchrun's elastic restart.

Two network namespaces joined by a veth pair play two machines (10.77.0.1 and 10.77.0.2, nothing
shared but the file system). On each, `torchrun --nnodes 2 --nproc_per_node 1` joins a c10d
rendezvous hosted by node 0 and runs `ddpm train --auto-resume` (gloo). The script runs:
  1. the reference: uninterrupted;
  2. the same run, in which the worker of rank 1 is killed with SIGKILL once the run has passed its
     first checkpoints; torchrun (--max-restarts) restarts both workers, which resume from the last
     checkpoint;
and compares the final weights of the two runs, tensor by tensor.

Needs root and `ip netns` (iproute2). Usage (from the repository root):
    sudo .venv/bin/python benchmarks/multinode.py [--steps 3000] [--every 500] [--kill-after 1200]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

NS = ("ddpm-node0", "ddpm-node1")
IFACE = ("veth-ddpm0", "veth-ddpm1")
ADDR = ("10.77.0.1", "10.77.0.2")
PORT = 29477


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def make_nodes() -> None:
    remove_nodes()
    for ns in NS:
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "link", "add", IFACE[0], "type", "veth", "peer", "name", IFACE[1])
    for ns, iface, addr in zip(NS, IFACE, ADDR, strict=True):
        sh("ip", "link", "set", iface, "netns", ns)
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", iface)
        sh("ip", "-n", ns, "link", "set", iface, "up")


def remove_nodes() -> None:
    for ns in NS:
        sh("ip", "netns", "delete", ns, check=False)


def launch(node: int, run_dir: Path, args, rdzv_id: str, log: Path) -> subprocess.Popen:
    """torchrun on one "node": its own network namespace, its own address."""
    cmd = [
        "ip", "netns", "exec", NS[node],
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "2", "--nproc_per_node", "1",
        "--rdzv_backend", "c10d", "--rdzv_endpoint", f"{ADDR[0]}:{PORT}", "--rdzv_id", rdzv_id,
        "--rdzv_conf", f"is_host={'true' if node == 0 else 'false'},join_timeout=120",
        "--local_addr", ADDR[node], "--max_restarts", "3", "--monitor_interval", "1",
        "-m", "ddpmkit.cli", "train", "--dataset", args.dataset, "--steps", str(args.steps),
        "--train.checkpoint_every", str(args.every), "--train.threads", "1",
        "--auto-resume", "-o", str(run_dir), "-q", "--no-report",
    ]  # fmt: skip
    # TORCH_DISABLE_SHARE_RDZV_TCP_STORE: a fresh store for the workers of every restart (see README)
    env = {**os.environ, "GLOO_SOCKET_IFNAME": IFACE[node], "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}  # fmt: skip
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def worker_pid(run_dir: Path, rank: int) -> int | None:
    """The training worker of `rank` (its environment says RANK=rank) for this run directory."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        is_worker = b"ddpmkit.cli" in cmdline and b"torch.distributed.run" not in cmdline
        if is_worker and str(run_dir).encode() in cmdline and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    return None


def leftover_pids(run_dir: Path) -> list[int]:
    """Processes still running `ddpm train` on this run directory."""
    out = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if proc.name.isdigit() and b"ddpmkit.cli" in cmdline and str(run_dir).encode() in cmdline:
            out.append(int(proc.name))
    return out


def newest_checkpoint_step(run_dir: Path) -> int:
    steps = [int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*")]
    return max(steps, default=0)


def run_pair(run_dir: Path, args, kill_after: int | None) -> dict:
    logs = [run_dir.with_name(f"{run_dir.name}.node{i}.log") for i in (0, 1)]
    t0 = time.time()
    procs = [launch(i, run_dir, args, run_dir.name, logs[i]) for i in (0, 1)]
    killed = None
    while any(p.poll() is None for p in procs):
        if kill_after is not None and killed is None and newest_checkpoint_step(run_dir) >= kill_after:
            pid = worker_pid(run_dir, 1)
            if pid:
                os.kill(pid, signal.SIGKILL)
                killed = {"pid": pid, "after_checkpoint": newest_checkpoint_step(run_dir),
                          "at_s": round(time.time() - t0, 1)}  # fmt: skip
                print(f"  killed rank 1 (pid {pid}) by SIGKILL after checkpoint {killed['after_checkpoint']}")
        if time.time() - t0 > args.timeout:
            for p in procs:
                p.kill()
            for pid in leftover_pids(run_dir):
                os.kill(pid, signal.SIGKILL)
            raise SystemExit(f"timed out; logs: {logs}")
        time.sleep(0.2)
    codes = [p.returncode for p in procs]
    for pid in leftover_pids(run_dir):  # a worker torchrun lost track of must not outlive the run
        os.kill(pid, signal.SIGKILL)
    return {"codes": codes, "seconds": round(time.time() - t0, 1), "killed": killed, "logs": logs}


def compare(a: Path, b: Path) -> float:
    from ddpmkit.io import load_tensors

    ta, tb = load_tensors(a / "model.safetensors"), load_tensors(b / "model.safetensors")
    assert ta.keys() == tb.keys()
    return max(float((ta[k].double() - tb[k].double()).abs().max()) for k in ta if ta[k].is_floating_point())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="moons")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--every", type=int, default=500, help="checkpoint every N steps")
    p.add_argument("--kill-after", type=int, default=1000, help="kill rank 1 once this checkpoint exists")
    p.add_argument("--out", default="runs/multinode")
    p.add_argument("--timeout", type=float, default=600)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (ip netns); skipped")
        return 0
    out = Path(args.out).absolute()
    subprocess.run(["rm", "-rf", str(out)], check=True)
    out.mkdir(parents=True)
    make_nodes()
    try:
        print(f"reference: 2 nodes x 1 process, {args.steps} steps, checkpoint every {args.every}")
        ref = run_pair(out / "reference", args, None)
        print(f"  exit codes {ref['codes']}, {ref['seconds']} s")
        print(f"faulty: same, rank 1 killed after checkpoint {args.kill_after}, torchrun --max_restarts 3")
        bad = run_pair(out / "killed", args, args.kill_after)
        print(f"  exit codes {bad['codes']}, {bad['seconds']} s")
    finally:
        remove_nodes()
    text = "".join(log.read_text() for log in bad["logs"])
    resumed = [line for line in text.splitlines() if line.startswith("resuming from step")]
    diff = compare(out / "reference", out / "killed")
    ok = ref["codes"] == [0, 0] and bad["codes"] == [0, 0] and bad["killed"] and resumed and diff == 0.0
    print(
        f"workers that failed (torchrun's log): {text.count('failed (exitcode')}; after the restart: "
        f"{'; '.join(resumed) or 'no resume'}"
    )
    print(f"max |weight difference| between the two runs: {diff}")
    print("PASS: the killed run recovered to the uninterrupted run's weights" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
