"""Side-by-side timing for the demo and the benchmarks: median of many runs after warm-up,
the functions run alternately so they see the same machine state; CUDA events on the GPU."""
import statistics
import time

import torch


def timer(device):
    """Returns a function timing fn() in milliseconds: CUDA events on the GPU."""
    if torch.device(device).type == "cuda":
        def run(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        return run

    def run(fn):
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    return run


def time_pair(fns, runs, device="cpu", warmup=3):
    """Median ms of each fn, run alternately."""
    clock = timer(device)
    for _ in range(warmup):
        for fn in fns:
            fn()
    samples = [[] for _ in fns]
    for _ in range(runs):
        for s, fn in zip(samples, fns):
            s.append(clock(fn))
    return [statistics.median(s) for s in samples]
