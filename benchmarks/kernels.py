"""Step-kernel microbenchmark: time per time step, and bytes/s against memory bandwidth.

    python benchmarks/kernels.py [--device cpu|cuda] [--shapes 64x512,1x256,256x1024]

For each cell and (N, H), float32, one layer, T steps:
- full step: one forward (backward) time step of the layer op, i.e. the op's time minus
  the large GEMMs outside the loop (x @ W_ih^T before it; dx, dW_ih, dW_hh after it), / T.
  That is the recurrent GEMM plus the fused pointwise pass, the sequential part.
- pointwise pass alone (CUDA): the step kernels' own time from torch.profiler, / T, and
  the bytes each pass must move (below) over that time, against the device's copy
  bandwidth. On the CPU the pointwise pass alone is timed by the C++ microbenchmark
  `build/cmake/bench_cells` (`make ctest` builds it); its ns/element and GB/s are printed
  when it is there.

Bytes per (row, unit) that a fused pass moves (s = storage bytes, 4 = opmath float):
  LSTM forward  10s + 7*4  (xg, hg 4 gates each; y, h; c read+write; 5 saved)
  LSTM backward  8s + 8*4  (grad y, dh; 4 gate grads; h_prev read+write; 5 saved, c_prev, dc r+w)
  GRU forward    8s + 6*4  (xg, hg 3 gates each; y, h; h read+write; 4 saved)
  GRU backward  10s + 6*4  (grad y, rec; h_prev r+w; 3+3 gate grads; 4 saved; dd r+w)
"""
import argparse
import os
import statistics
import subprocess
import sys

import torch

import fusedrnn  # noqa: F401  (registers the ops)
from fusedrnn.timing import timer

ops = torch.ops.fusedrnn
GATES = {"LSTM": 4, "GRU": 3}
BYTES = {("LSTM", "forward"): (10, 7), ("LSTM", "backward"): (8, 8),
         ("GRU", "forward"): (8, 6), ("GRU", "backward"): (10, 6)}


def median_ms(fn, device, runs=20):
    clock = timer(device)
    for _ in range(3):
        fn()
    return statistics.median(clock(fn) for _ in range(runs))


def copy_bandwidth(device):
    """GB/s of a large copy, counting bytes read plus written."""
    n = (256 if device.type == "cuda" else 64) * 2**20 // 4
    a = torch.randn(n, device=device)
    b = torch.empty_like(a)
    ms = median_ms(lambda: b.copy_(a), device, runs=10)
    return 2 * a.numel() * 4 / ms / 1e6


def layer_args(cell, T, N, H, device):
    G = GATES[cell] * H
    r = lambda *s: torch.randn(*s, device=device) * H**-0.5  # noqa: E731
    x, w_ih, w_hh, b_ih, b_hh, h0 = r(T, N, H), r(G, H), r(G, H), r(G), r(G), r(N, H)
    if cell == "LSTM":
        return (x, w_ih, w_hh, b_ih, b_hh, None, h0, r(N, H), None, False)
    return (x, w_ih, w_hh, b_ih, b_hh, h0, None, False)


def measure(cell, T, N, H, device):
    fwd = getattr(ops, f"{cell.lower()}_forward")
    bwd = getattr(ops, f"{cell.lower()}_backward")
    a = layer_args(cell, T, N, H, device)
    x, w_ih, w_hh = a[0], a[1], a[2]
    outs = fwd(*a)
    grads = [torch.randn_like(o) for o in outs[:-1]]
    if cell == "LSTM":
        b_args = (*grads, x, w_ih, w_hh, None, a[6], a[7], outs[0], outs[-1], None, False)
    else:
        b_args = (*grads, x, w_ih, w_hh, a[5], outs[0], outs[-1], None, False)
    x2, g2 = x.reshape(T * N, H), torch.randn(T * N, GATES[cell] * H, device=device)
    t_fwd = median_ms(lambda: fwd(*a), device)
    t_bwd = median_ms(lambda: bwd(*b_args), device)
    t_in = median_ms(lambda: x2 @ w_ih.t(), device)
    t_after = median_ms(lambda: (g2 @ w_ih, g2.t() @ x2, g2.t() @ x2), device)
    res = {"forward step us": (t_fwd - t_in) * 1e3 / T, "backward step us": (t_bwd - t_after) * 1e3 / T}
    if device.type == "cuda":
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fwd(*a)
            bwd(*b_args)
            torch.cuda.synchronize()
        for e in prof.key_averages():
            for phase in ("forward", "backward"):
                if e.key.startswith(f"void fusedrnn::cuda::") and f"{cell.lower()}_{phase}_kernel" in e.key:
                    us = e.device_time_total / T
                    s, f = BYTES[(cell, phase)]
                    res[f"{phase} pointwise us"] = us
                    res[f"{phase} pointwise GB/s"] = N * H * (4 * s + 4 * f) / us / 1e3
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shapes", default="64x512,1x256,16x768,256x1024", help="NxH list")
    p.add_argument("-T", type=int, default=100)
    a = p.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    bw = copy_bandwidth(device)
    print(f"{device} | torch {torch.__version__} | {torch.get_num_threads()} threads | float32, "
          f"T={a.T} | copy bandwidth {bw:.0f} GB/s (read + write)")
    for cell in ("LSTM", "GRU"):
        for shape in a.shapes.split(","):
            N, H = map(int, shape.split("x"))
            r = measure(cell, a.T, N, H, device)
            line = f"{cell:4s} N={N:<4d} H={H:<5d} " + "  ".join(
                f"{k} {v:8.1f}" + (f" ({100 * v / bw:.0f}% of copy)" if "GB/s" in k else "")
                for k, v in r.items())
            print(line)
    exe = os.path.join(os.path.dirname(__file__), "..", "build", "cmake", "bench_cells")
    if device.type == "cpu":
        if os.path.exists(exe):
            print("\npointwise pass alone (C++, one thread, cache-resident):")
            sys.stdout.flush()
            subprocess.run([exe], check=True)
        else:
            print("\n(build/cmake/bench_cells missing: `make ctest` builds the C++ pointwise benchmark)")


if __name__ == "__main__":
    main()
