"""Shared cores: several processes running the same layer at once, fusedrnn vs torch.nn.

    python benchmarks/contention.py [--procs 1,2] [--hogs 0] [--cell LSTM,GRU]
        [--mode inference] [-T 200] [-N 1] [-H 256] [--seconds 6] [--rounds 2]
        [--libs torch.nn,fusedrnn] [--out results/NAME.md]

Each process uses torch's default thread count, so with two processes on a 2-core machine
every core has two runnable threads (two jobs of a sweep, data-loader workers beside a
model). A phase starts `procs` processes that all run one library's layer for `seconds`
from a common start time, each taking the median of its calls; phases alternate between
the libraries, `rounds` times each, and a row reports the median over processes and rounds
(ratio = torch.nn / fusedrnn, above 1: fusedrnn faster). The libraries never run at the
same time: the machine is shared only among processes of one library, as `procs` copies of
one job would share it, and with `hogs` single-threaded busy loops (another job holding
cores) that run through every phase.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch


def child(lib, cell, mode, T, N, H, start, seconds):
    import fusedrnn
    torch.manual_seed(0)
    m = getattr(fusedrnn if lib == "fusedrnn" else torch.nn, cell)(H, H)
    x = torch.randn(T, N, H)
    upstream = torch.ones(T, N, H)  # made once: torch.ones_like forks an OpenMP team per call

    def run():
        if mode == "inference":
            with torch.no_grad():
                m(x)
        else:
            xx = x.detach().requires_grad_()
            y = m(xx)[0]
            torch.autograd.grad(y, [xx, *m.parameters()], upstream)

    run()
    run()
    time.sleep(max(0.0, start - time.time()))
    times = []
    while time.time() < start + seconds or len(times) < 3:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"median_ms": statistics.median(times) * 1e3, "calls": len(times),
                      "max_ms": max(times) * 1e3}))


def phase(lib, procs, a, cell):
    start = time.time() + 3.0  # after every process has imported torch and warmed up
    cmd = [sys.executable, __file__, "--child", lib, "--cell", cell, "--mode", a.mode,
           "-T", str(a.T), "-N", str(a.N), "-H", str(a.H), "--start", str(start),
           "--seconds", str(a.seconds)]
    ps = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    out = []
    for p in ps:
        stdout, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"child failed: {' '.join(cmd)}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--procs", default="1,2")
    p.add_argument("--cell", default="LSTM,GRU")
    p.add_argument("--mode", default="inference", choices=["inference", "training"])
    p.add_argument("-T", type=int, default=200)
    p.add_argument("-N", type=int, default=1)
    p.add_argument("-H", type=int, default=256)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--libs", default="torch.nn,fusedrnn")
    p.add_argument("--hogs", type=int, default=0)
    p.add_argument("--out", default=None)
    p.add_argument("--child", default=None)
    p.add_argument("--start", type=float, default=0.0)
    a = p.parse_args()
    if a.child:
        return child(a.child, a.cell, a.mode, a.T, a.N, a.H, a.start, a.seconds)
    import fusedrnn  # noqa: F401  (fails early if the extension is missing)
    lines = [f"# Shared cores: {os.cpu_count()} cores, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads a process",
             "",
             f"T={a.T}, N={a.N}, I=H={a.H}, {a.mode}; {a.hogs} busy-loop processes beside; "
             f"each process times its calls for {a.seconds:g} s; medians over processes and "
             f"{a.rounds} alternated rounds.",
             "",
             "| cell | processes | torch.nn ms | fusedrnn ms | ratio | torch.nn max ms "
             "| fusedrnn max ms |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(a.hogs)]
    try:
        rows(a, lines)
    finally:
        for h in hogs:
            h.kill()
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


def rows(a, lines):
    for cell in a.cell.split(","):
        for procs in map(int, a.procs.split(",")):
            libs = a.libs.split(",")
            res = {lib: [] for lib in libs}
            for r in range(a.rounds):
                for lib in libs if r % 2 == 0 else libs[::-1]:
                    res[lib] += phase(lib, procs, a, cell)
            nan = {"median_ms": float("nan"), "max_ms": float("nan")}
            med = {k: statistics.median(x["median_ms"] for x in res.get(k, [nan]))
                   for k in ("torch.nn", "fusedrnn")}
            mx = {k: max(x["max_ms"] for x in res.get(k, [nan])) for k in ("torch.nn", "fusedrnn")}
            lines.append(f"| {cell} | {procs} | {med['torch.nn']:.2f} | {med['fusedrnn']:.2f} "
                         f"| {med['torch.nn'] / med['fusedrnn']:.2f}x | {mx['torch.nn']:.1f} "
                         f"| {mx['fusedrnn']:.1f} |")
            print(lines[-1], flush=True)


if __name__ == "__main__":
    main()
