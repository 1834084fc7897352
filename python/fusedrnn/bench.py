"""The layer benchmark: fusedrnn against torch.nn (and the pure-PyTorch reference loop)
on a named shape grid, side by side in one process.

    python -m fusedrnn bench --grid all [--device cpu] [--out benchmarks/results]
    python benchmarks/layers.py ...   (the same)

Per row (cell, shape, dtype, mode): median times of torch.nn, fusedrnn and the reference,
run alternately after warm-up (CUDA events on the GPU); the ratio torch.nn / fusedrnn
(above 1: fusedrnn is faster); achieved GFLOP/s and the fraction of the machine's peak;
for inference rows, the output's relative error of fusedrnn and of torch.nn against
fusedrnn run in float64. With --rounds K the whole grid runs K times and each row
reports its median round by ratio, with the span of the K ratios (run_grid). Writes
<device>-<date>.json (environment, peaks, rows), .md (the table) and .png (ratios; needs
matplotlib) into --out.

FLOPs count the GEMMs only: per layer and direction, 2*R*G*(I_l + P) for the forward,
with R = rows (T*N, or the sum of lengths when packed), G = 4H (LSTM) or 3H (GRU),
I_l the layer's input size, P = proj_size or H (plus 2*R*P*H for a projection).
Training (forward + backward) counts 3x that: backward does the input-gradient and the
weight-gradient GEMMs, each as large as the forward's. Pointwise work is not counted.
Peak: the best of torch's GEMMs on this device and dtype (a large square product, all
threads), measured once per run; on the GPU in true fp32 (TF32 off). Row peak: that GEMM
timed again around each row (3 calls before, 3 after, the median), for the fraction of
the peak in the row's own minutes.
"""
import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from fusedrnn.reference import gru_ref, lstm_ref
from fusedrnn.timing import timer

# The named shapes. Keep them stable: results are compared across commits by name.
SHAPES = {
    "fastrnns": dict(T=100, N=64, I=512, H=512),
    "latency": dict(T=200, N=1, I=256, H=256),
    "small-batch": dict(T=256, N=16, I=768, H=768),
    "wide": dict(T=50, N=256, I=1024, H=1024),
    "deep": dict(T=100, N=32, I=512, H=512, layers=2, bidirectional=True),
    "packed": dict(T=99, N=64, I=512, H=512, lengths=(30, 100)),
    "flashrnn": dict(T=1024, N=16, I=768, H=768),  # FlashRNN's comparison shape, CUDA only
    # One step of a decoder or a policy, called step by step: the weights' read, not the
    # products, is the cost.
    "step": dict(T=1, N=1, I=1024, H=1024),
}
CPU_SHAPES = ["fastrnns", "latency", "small-batch", "wide", "deep", "packed"]
GRIDS = {
    "cpu": (CPU_SHAPES + ["step"], ["float32", "float64", "bfloat16"]),
    "cuda": (CPU_SHAPES + ["flashrnn"], ["float32", "bfloat16", "float16"]),
    "gpu-check": (["fastrnns", "latency", "flashrnn"], ["float32", "bfloat16"]),
}
MODES = ["inference", "training"]
CELLS = {"LSTM": (torch.nn.LSTM, fusedrnn.LSTM, 4), "GRU": (torch.nn.GRU, fusedrnn.GRU, 3)}


def flops(cell, shape, rows, mode):
    """GEMM FLOPs of one call (see the module docstring)."""
    G = CELLS[cell][2] * shape["H"]
    H, layers = shape["H"], shape.get("layers", 1)
    D = 2 if shape.get("bidirectional") else 1
    total = 0
    for layer in range(layers):
        I = shape["I"] if layer == 0 else D * H
        total += D * 2 * rows * G * (I + H)
    return total * (3 if mode == "training" else 1)


@functools.lru_cache(maxsize=None)
def _peak_size(device_type, dtype):
    """The peak GEMMs' n: 4096 on a GPU, 2048 on the CPU, halved while one call would take
    more than a second at the rate of a 256 probe. bfloat16 on a CPU without AVX-512 (a
    2-core Zen 3) ran torch.mm at ~1 GFLOP/s: 18 s a 2048 call, and the grid's peak and
    per-row peaks did not finish."""
    if device_type == "cuda":
        return 4096
    a = torch.randn(256, 256).to(dtype)
    torch.mm(a, a)
    start = time.perf_counter()
    torch.mm(a, a)
    rate = 2 * 256**3 / max(time.perf_counter() - start, 1e-9)
    n = 2048
    while n > 256 and 2 * n**3 / rate > 1.0:
        n //= 2
    return n


def _peak_gemms(device, dtype):
    """The large square GEMMs torch offers here, {name: fn}, and their FLOPs."""
    n = _peak_size(device.type, dtype)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    cands = {"torch.mm": lambda: torch.mm(a, b)}
    if device.type == "cpu" and dtype != torch.float64 and torch.backends.mkldnn.is_available():
        am, bm = a.to_mkldnn(), b.t().contiguous().to_mkldnn()
        cands["onednn"] = lambda: torch._C._nn.mkldnn_linear(am, bm)
    return cands, 2 * n**3


def measure_peak(device, dtype):
    """GFLOP/s of the best large GEMM torch offers here (the ceiling for fraction-of-peak)."""
    cands, fl = _peak_gemms(device, dtype)
    clock = timer(device)
    best = {}
    for name, fn in cands.items():
        try:
            for _ in range(3):
                fn()
            best[name] = fl / statistics.median(clock(fn) for _ in range(7)) / 1e6
        except RuntimeError:  # a GEMM this build lacks
            pass
    name = max(best, key=best.get)
    return best[name], name


class RowPeak:
    """The run's peak GEMM timed again around every row: GFLOP/s, the median of `runs`
    calls before the row and `runs` after. A shared host's speed moves by a third within
    minutes (torch.mm read 149-294 GFLOP/s in one afternoon on the 2-core CPU), so a
    row's fraction of the peak measured once, at the start, says as much about the host
    as about the kernel; against the peak of the row's own minutes it does not."""

    def __init__(self, device, dtype, name, runs=3):
        cands, self.flop = _peak_gemms(device, dtype)
        self.fn, self.clock, self.runs, self.samples = cands[name], timer(device), runs, []
        self.fn()

    def sample(self):
        self.samples += [self.clock(self.fn) for _ in range(self.runs)]

    def gflops(self):
        ms, self.samples = statistics.median(self.samples), []
        return self.flop / ms / 1e6


def environment(device):
    env = {
        "date": datetime.date.today().isoformat(),
        "device": device.type,
        "torch": torch.__version__,
        "fusedrnn": fusedrnn.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu": _cpu_model(),
        "git_commit": _git_commit(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _git_commit():
    if os.environ.get("FUSEDRNN_GIT_COMMIT"):  # a copy of the tree without .git (GPU lease)
        return os.environ["FUSEDRNN_GIT_COMMIT"]
    here = os.path.dirname(os.path.abspath(__file__))
    for cwd in (os.getcwd(), here):
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                                 text=True, timeout=10)
            if out.returncode == 0:
                dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], cwd=cwd,
                                       capture_output=True, text=True, timeout=10).stdout
                return out.stdout.strip() + ("-dirty" if dirty.strip() else "")
        except (OSError, subprocess.SubprocessError):
            pass
    return "unknown"


class Case:
    """The modules and inputs of one (cell, shape, dtype) on one device."""

    def __init__(self, cell, name, dtype, device, seed=0):
        torch_cls, ours_cls, _ = CELLS[cell]
        s = SHAPES[name]
        self.cell, self.shape = cell, s
        torch.manual_seed(seed)
        kw = dict(num_layers=s.get("layers", 1), bidirectional=s.get("bidirectional", False))
        self.torch_m = torch_cls(s["I"], s["H"], **kw).to(device, dtype)
        self.ours = ours_cls(s["I"], s["H"], **kw).to(device, dtype)
        self.ours.load_state_dict(self.torch_m.state_dict())
        self.x = torch.randn(s["T"], s["N"], s["I"], device=device).to(dtype)
        self.lengths = None
        self.rows = s["T"] * s["N"]
        if "lengths" in s:
            lo, hi = s["lengths"]
            g = torch.Generator().manual_seed(seed)
            self.lengths = torch.randint(lo, hi, (s["N"],), generator=g)
            self.rows = int(self.lengths.sum())

    def input(self, requires_grad=False):
        x = self.x.detach().requires_grad_(requires_grad)
        if self.lengths is None:
            return x
        return pack_padded_sequence(x[: int(self.lengths.max())], self.lengths, enforce_sorted=False)

    def reference(self):
        """The pure-PyTorch time loop on this module's weights (padded input only)."""
        m = self.torch_m
        weights = [getattr(m, n) for n in m._flat_weights_names]
        D = 2 if m.bidirectional else 1

        def run(x):
            h0 = x.new_zeros(m.num_layers * D, x.size(1), m.hidden_size)
            if self.cell == "LSTM":
                return lstm_ref(x, h0, h0, weights, m.bias, m.num_layers, m.bidirectional)
            return gru_ref(x, h0, weights, m.bias, m.num_layers, m.bidirectional)
        return run

    def call(self, fn, mode):
        def inference():
            with torch.no_grad():
                fn(self.input())

        def training():
            for p in self.torch_m.parameters():
                p.grad = None
            for p in self.ours.parameters():
                p.grad = None
            out = fn(self.input(requires_grad=True))
            y = out[0]
            y = y.data if hasattr(y, "batch_sizes") else y
            y.backward(torch.ones_like(y))
        return inference if mode == "inference" else training

    def errors(self):
        """Output rel. error of fusedrnn and torch.nn against fusedrnn in float64."""
        ours64 = type(self.ours)(self.shape["I"], self.shape["H"], num_layers=self.ours.num_layers,
                                 bidirectional=self.ours.bidirectional).to(self.x.device,
                                                                          torch.float64)
        ours64.load_state_dict({k: v.double() for k, v in self.ours.state_dict().items()})
        with torch.no_grad():
            x = self.input()
            x64 = x.to(torch.float64) if self.lengths is not None else x.double()
            ref = _data(ours64(x64)[0])
            e = {}
            for key, m in (("err_ours", self.ours), ("err_torch", self.torch_m)):
                y = _data(m(x)[0]).double()
                e[key] = ((y - ref).norm() / ref.norm()).item()
        return e


def _data(y):
    return y.data if hasattr(y, "batch_sizes") else y


def time_alternating(fns, device, budget_s, min_runs, max_runs):
    """Median ms of each fn, run alternately after one warm-up call each, as many runs as
    fit in budget_s per function (at least min_runs). The order rotates every run (run k
    starts with fn k mod len(fns)), so that no fn always runs right after the same other
    one: that slot reads slower (the caches hold the other's data). On the 2-core Zen 4,
    fusedrnn twice in one alternation (two settings that are level when their order is
    swapped every run) read the one right after torch.nn's call 8-10% slower at T=200,
    N=1, I=H=256. The grids up to c536f6a ran torch.nn, fusedrnn, the
    reference in that order every run."""
    clock = timer(device)
    first = []
    for fn in fns:
        fn()  # warm-up (allocator, autotuning, lazy init)
        first.append(clock(fn))
    runs = max(min_runs, min(max_runs, int(budget_s * 1e3 / max(max(first), 1e-3))))
    samples = [[] for _ in fns]
    for k in range(runs):
        for i in range(len(fns)):
            j = (i + k) % len(fns)
            samples[j].append(clock(fns[j]))
    return [statistics.median(s) for s in samples], runs


def run_grid(shapes, dtypes, cells, device, args, progress=sys.stderr):
    """The rows of the grid, each timed in `args.rounds` rounds: the whole grid once per
    round, so a row's rounds lie minutes apart. A shared host's speed moves within
    minutes, and not by the same factor for torch.nn and fusedrnn (the same binary's
    latency LSTM ratio read 1.3x-1.7x within one hour), so one window of a second decides a
    single round's ratio. A row reports its median round (by ratio; the lower middle one
    for an even count), with every round's ratio and times under `rounds` and their span
    in ratio_min / ratio_max."""
    todo = [(c, s, d, m) for s in shapes for c in cells for d in dtypes for m in MODES]
    rounds = max(1, getattr(args, "rounds", 1))
    peaks, row_peaks, done = {}, {}, {}
    start = time.perf_counter()
    total = len(todo) * rounds
    for k, (rnd, (cell, name, dt, mode)) in enumerate(
            (r, item) for r in range(rounds) for item in todo):
        dtype = getattr(torch, dt)
        if dt not in peaks:
            peaks[dt] = measure_peak(device, dtype)
            row_peaks[dt] = RowPeak(device, dtype, peaks[dt][1])
        elapsed = time.perf_counter() - start
        eta = elapsed / k * (total - k) if k else float("nan")
        print(f"\r[{k + 1:3d}/{total}] {name:12s} {cell:4s} {dt:8s} {mode:9s} "
              f"elapsed {elapsed:6.0f}s eta {eta:6.0f}s ", end="", file=progress, flush=True)
        case = Case(cell, name, dtype, device)
        fns = [case.call(case.torch_m, mode), case.call(case.ours, mode)]
        with_ref = args.reference and dt == "float32" and case.lengths is None
        if with_ref:
            fns.append(case.call(case.reference(), mode))
        row_peaks[dt].sample()
        times, runs = time_alternating(fns, device, args.budget, args.min_runs, args.max_runs)
        row_peaks[dt].sample()
        fl = flops(cell, case.shape, case.rows, mode)
        peak, row_peak = peaks[dt][0], row_peaks[dt].gflops()
        row = dict(
            cell=cell, shape=name, dtype=dt, mode=mode, runs=runs,
            **{k: v for k, v in case.shape.items() if k != "lengths"},
            rows=case.rows, gflop=fl / 1e9,
            torch_ms=times[0], fused_ms=times[1], ref_ms=times[2] if with_ref else None,
            ratio=times[0] / times[1],
            fused_gflops=fl / times[1] / 1e6, torch_gflops=fl / times[0] / 1e6,
            fused_frac_peak=fl / times[1] / 1e6 / peak, torch_frac_peak=fl / times[0] / 1e6 / peak,
            row_peak_gflops=row_peak, fused_frac_row_peak=fl / times[1] / 1e6 / row_peak,
            torch_frac_row_peak=fl / times[0] / 1e6 / row_peak,
            fused_us_per_step=times[1] * 1e3 / case.shape["T"],
        )
        if mode == "inference" and args.errors and rnd == 0:
            row.update(case.errors())
        done.setdefault((cell, name, dt, mode), []).append(row)
        del case
    print(file=progress)
    rows = []
    for key in todo:
        got = done[key]
        chosen = dict(sorted(got, key=lambda r: r["ratio"])[(len(got) - 1) // 2])
        for extra in ("err_ours", "err_torch"):
            if extra in got[0]:
                chosen[extra] = got[0][extra]
        chosen["rounds"] = [dict(ratio=r["ratio"], torch_ms=r["torch_ms"], fused_ms=r["fused_ms"],
                                 row_peak_gflops=r["row_peak_gflops"]) for r in got]
        chosen["ratio_min"] = min(r["ratio"] for r in got)
        chosen["ratio_max"] = max(r["ratio"] for r in got)
        rows.append(chosen)
    return peaks, rows


def markdown(env, peaks, rows):
    where = env.get("gpu") or env["cpu"]
    n_rounds = max((len(r.get("rounds", [])) for r in rows), default=1)
    lines = [
        f"# fusedrnn vs torch.nn: {env['device']} ({where}), {env['date']}",
        "",
        f"torch {env['torch']}, {env['threads']} threads, commit `{env['git_commit'][:12]}`. "
        "Median times in ms; ratio = torch.nn / fusedrnn (above 1: fusedrnn faster). "
        "GFLOP/s count the GEMMs only (training = 3x forward); % peak is against the best "
        "large GEMM measured in the same run: "
        + ", ".join(f"{d} {p:.0f} GFLOP/s ({src})" for d, (p, src) in peaks.items()) + "; "
        "row peak: that GEMM's GFLOP/s timed again just before and after the row (median of "
        "6 calls), and % row peak fusedrnn's GFLOP/s against it."
        + (f" Each row timed in {n_rounds} rounds of the whole grid, minutes apart: its "
           "median round (by ratio) is shown, and the span of the rounds' ratios."
           if n_rounds > 1 else ""),
        "",
        "| shape | cell | dtype | mode | torch.nn ms | fusedrnn ms | ratio | rounds' ratios "
        "| fusedrnn GFLOP/s "
        "| % peak | torch.nn % peak | row peak GFLOP/s | % row peak | torch.nn % row peak "
        "| reference ms | err fusedrnn | err torch.nn |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ref = f"{r['ref_ms']:.2f}" if r["ref_ms"] is not None else "-"
        eo = f"{r['err_ours']:.1e}" if "err_ours" in r else "-"
        et = f"{r['err_torch']:.1e}" if "err_torch" in r else "-"
        span = (f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}"
                if len(r.get("rounds", [])) > 1 else "-")
        lines.append(
            f"| {r['shape']} | {r['cell']} | {r['dtype']} | {r['mode']} | {r['torch_ms']:.2f} "
            f"| {r['fused_ms']:.2f} | **{r['ratio']:.2f}x** | {span} | {r['fused_gflops']:.0f} "
            f"| {100 * r['fused_frac_peak']:.0f}% | {100 * r['torch_frac_peak']:.0f}% "
            f"| {r['row_peak_gflops']:.0f} | {100 * r['fused_frac_row_peak']:.0f}% "
            f"| {100 * r['torch_frac_row_peak']:.0f}% | {ref} "
            f"| {eo} | {et} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows, path, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return False
    labels = [f"{r['shape']} {r['cell']} {r['dtype'].replace('float', 'f').replace('bf16', 'bf16')}"
              f" {'inf' if r['mode'] == 'inference' else 'train'}" for r in rows]
    ratios = [r["ratio"] for r in rows]
    fig, ax = plt.subplots(figsize=(10, max(4, 0.22 * len(rows))))
    colors = ["tab:green" if v >= 1 else "tab:red" for v in ratios]
    ax.barh(range(len(rows)), ratios, color=colors)
    ax.axvline(1.0, color="black", lw=1)
    ax.set_xscale("log")
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("torch.nn time / fusedrnn time (log; > 1: fusedrnn faster)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def device_slug(env):
    if env["device"] == "cuda":
        name = env["gpu"].lower().replace("nvidia", "").strip()
        return "cuda-" + "-".join(name.split()[:2])
    cpu = env["cpu"].lower()
    vendor = "amd" if "amd" in cpu else ("intel" if "intel" in cpu else "cpu")
    return f"cpu-{vendor}-{env['threads']}t"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m fusedrnn bench", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--grid", default="all",
                   help="'all' (the device's grid), 'gpu-check', or comma-separated shape names: "
                   + ", ".join(SHAPES))
    p.add_argument("--dtypes", default=None, help="comma-separated (default: the grid's)")
    p.add_argument("--cells", default="LSTM,GRU")
    p.add_argument("--budget", type=float, default=1.0, help="seconds of timed runs per function")
    p.add_argument("--min-runs", type=int, default=5)
    p.add_argument("--max-runs", type=int, default=50)
    p.add_argument("--rounds", type=int, default=1,
                   help="time the whole grid this many times; each row reports its median "
                   "round and the span of the rounds' ratios")
    p.add_argument("--no-reference", dest="reference", action="store_false",
                   help="skip the pure-PyTorch loop (timed for float32 padded rows)")
    p.add_argument("--no-errors", dest="errors", action="store_false")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default=None, help="output file stem (default: <device>-<date>)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":  # true fp32 on both sides
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if args.grid in ("all", "gpu-check"):
        shapes, dtypes = GRIDS[device.type if args.grid == "all" else "gpu-check"]
    else:
        shapes, dtypes = args.grid.split(","), GRIDS[device.type][1]
        unknown = [s for s in shapes if s not in SHAPES]
        if unknown:
            sys.exit(f"unknown shapes {unknown}; known: {list(SHAPES)}")
    if args.dtypes:
        dtypes = args.dtypes.split(",")
    env = environment(device)
    peaks, rows = run_grid(shapes, dtypes, args.cells.split(","), device, args)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, args.name or f"{device_slug(env)}-{env['date']}")
    with open(stem + ".json", "w") as f:
        json.dump(dict(env=env, grid=args.grid, peaks_gflops={d: dict(gflops=p, gemm=s)
                  for d, (p, s) in peaks.items()}, flop_count=__doc__.split("FLOPs")[1].split(
                  "Peak:")[0].strip(), rows=rows), f, indent=1)
    table = markdown(env, peaks, rows)
    with open(stem + ".md", "w") as f:
        f.write(table)
    plotted = plot(rows, stem + ".png", table.splitlines()[0].lstrip("# "))
    print(table)
    print("wrote", ", ".join(stem + e for e in (".json", ".md") + ((".png",) if plotted else ())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
