"""Small layers: fusedrnn against torch.nn across hidden sizes, batch 1 (or -N), T steps.

    python benchmarks/hidden_sweep.py [--device cpu] [-T 200] [-N 1] [--sizes 16,32,...]
                                      [--dtype float32] [--budget 1.0] [--out DIR]

The named shapes of `python -m fusedrnn bench` start at H=256. Below it a step is a few
microseconds of products, and what a layer pays besides them (the workers' barrier, the
call itself) decides the ratio: this sweep shows where that happens. I=H, one layer,
inference (no_grad) and training (forward + backward of y.sum()), both cells; each pair
timed alternately in one process (bench.time_alternating). Prints a markdown table of
torch.nn ms, fusedrnn ms and ratio (torch.nn / fusedrnn); with --out, writes it and the
JSON with the environment there.
"""
import argparse
import json
import os

import torch

import fusedrnn
from fusedrnn.bench import device_slug, environment, time_alternating


def pair_fns(cell, T, N, H, dtype, device, train):
    torch.manual_seed(0)
    ref = getattr(torch.nn, cell)(H, H).to(device, dtype)
    ours = getattr(fusedrnn, cell)(H, H).to(device, dtype)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, N, H, device=device, dtype=dtype)

    def run(m):
        if not train:
            def fn():
                with torch.no_grad():
                    m(x)
            return fn

        def fn():
            for p in m.parameters():
                p.grad = None
            xx = x.detach().requires_grad_()
            m(xx)[0].sum().backward()
        return fn
    return run(ref), run(ours)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("-T", type=int, default=200)
    p.add_argument("-N", type=int, default=1)
    p.add_argument("--sizes", default="16,32,48,64,96,128,160,192,256")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--budget", type=float, default=1.0, help="seconds of runs per function")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    rows = []
    for cell in ("LSTM", "GRU"):
        for train in (False, True):
            for H in [int(s) for s in a.sizes.split(",")]:
                fns = pair_fns(cell, a.T, a.N, H, dtype, device, train)
                (t_ref, t_ours), runs = time_alternating(fns, device, a.budget, 20, 2000)
                rows.append(dict(cell=cell, mode="training" if train else "inference", H=H,
                                 torch_ms=t_ref, fusedrnn_ms=t_ours, ratio=t_ref / t_ours,
                                 runs=runs))
                r = rows[-1]
                print(f"{cell} {r['mode']:9s} H={H:4d}  torch.nn {t_ref:8.3f} ms  "
                      f"fusedrnn {t_ours:8.3f} ms  {r['ratio']:5.2f}x", flush=True)
    env = environment(device)
    md = [f"# Hidden-size sweep: T={a.T}, N={a.N}, I=H, {a.dtype}, {device_slug(env)}", "",
          f"torch {env['torch']}, {env['threads']} threads, commit {env['git_commit']}, "
          f"{env['date']}. Ratio: torch.nn / fusedrnn (above 1: fusedrnn faster).", "",
          "| cell | mode | H | torch.nn ms | fusedrnn ms | ratio |", "|---|---|---|---|---|---|"]
    md += [f"| {r['cell']} | {r['mode']} | {r['H']} | {r['torch_ms']:.3f} | "
           f"{r['fusedrnn_ms']:.3f} | {r['ratio']:.2f}x |" for r in rows]
    print("\n".join(md))
    if a.out:
        stem = os.path.join(a.out, f"{device_slug(env)}-{env['date']}-hidden-sweep-"
                                   f"N{a.N}-{a.dtype}")
        with open(stem + ".json", "w") as f:
            json.dump(dict(env=env, T=a.T, N=a.N, dtype=a.dtype, rows=rows), f, indent=1)
        with open(stem + ".md", "w") as f:
            f.write("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
