"""Packed vs padded time, fusedrnn and torch.nn side by side (pytorch/pytorch#149194).

    python benchmarks/packed.py [--cell LSTM] [-N 64] [-H 512] [--runs 10]

Lengths are drawn uniformly from [30, 100) (the `packed` shape of the benchmark grid);
padded input runs all N sequences for max(lengths) steps. Prints median times (ms) of
forward (no_grad) and forward+backward, and the packed/padded ratio of each library.
"""
import argparse

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from fusedrnn.timing import time_pair


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cell", default="LSTM", choices=["LSTM", "GRU"])
    p.add_argument("-N", type=int, default=64)
    p.add_argument("-H", type=int, default=512)
    p.add_argument("--runs", type=int, default=10)
    a = p.parse_args()
    torch.manual_seed(0)
    lengths = torch.randint(30, 100, (a.N,))
    T = int(lengths.max())
    ref = getattr(torch.nn, a.cell)(a.H, a.H)
    ours = getattr(fusedrnn, a.cell)(a.H, a.H)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, a.N, a.H, requires_grad=True)

    def fwd(m, packed):
        def run():
            with torch.no_grad():
                m(pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x)
        return run

    def fwd_bwd(m, packed):
        def run():
            y, _ = m(pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x)
            (y.data if packed else y).sum().backward()
        return run

    print(f"{a.cell} N={a.N} H={a.H} T={T} lengths in [30,100), mean {lengths.float().mean():.1f}"
          f" | {torch.get_num_threads()} threads, median of {a.runs}")
    print(f"{'':22}{'padded':>10}{'packed':>10}{'packed/padded':>15}")
    for mode, make in (("forward", fwd), ("forward+backward", fwd_bwd)):
        for name, m in (("torch.nn", ref), ("fusedrnn", ours)):
            pad, pk = time_pair([make(m, False), make(m, True)], a.runs)
            print(f"{name + ' ' + mode:22}{pad:8.1f}ms{pk:8.1f}ms{pk / pad:14.2f}x")


if __name__ == "__main__":
    main()
