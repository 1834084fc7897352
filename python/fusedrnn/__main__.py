"""python -m fusedrnn: the main job. Checks fusedrnn against torch.nn and times both.
(`python -m fusedrnn bench ...` runs the benchmark grid instead: fusedrnn/bench.py.)

For LSTM and GRU at one shape, on the best device present: copies torch.nn's weights
into fusedrnn, prints the relative error of every output and gradient (against torch.nn
and against the float64 reference, with the tolerance rule's bound), then forward and
forward+backward times side by side. Exits 1 if any row breaks the tolerance rule.
"""
import argparse
import sys

import torch

import fusedrnn
from fusedrnn.testing import compare
from fusedrnn.timing import time_pair

CELLS = {"LSTM": (torch.nn.LSTM, fusedrnn.LSTM), "GRU": (torch.nn.GRU, fusedrnn.GRU)}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m fusedrnn", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    p.add_argument("-T", type=int, default=100, help="sequence length")
    p.add_argument("-N", type=int, default=64, help="batch")
    p.add_argument("-I", type=int, default=512, help="input size")
    p.add_argument("-H", type=int, default=512, help="hidden size")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--bidirectional", action="store_true")
    p.add_argument("--runs", type=int, default=15, help="timed runs per measurement")
    p.add_argument("--cells", default="LSTM,GRU")
    return p.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from fusedrnn.bench import main as bench
        return bench(argv[1:])
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    print(f"fusedrnn {fusedrnn.__version__} | torch {torch.__version__} | {device} "
          f"({torch.get_num_threads()} threads) | {args.dtype}")
    print(f"shape: T={args.T} N={args.N} I={args.I} H={args.H} layers={args.layers} "
          f"bidirectional={args.bidirectional}\n")
    ok = True
    for cell in args.cells.split(","):
        torch_cls, ours_cls = CELLS[cell]
        torch.manual_seed(0)
        kw = dict(num_layers=args.layers, bidirectional=args.bidirectional, device=device, dtype=dtype)
        ref = torch_cls(args.I, args.H, **kw)
        ours = ours_cls(args.I, args.H, **kw)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(args.T, args.N, args.I, device=device, dtype=dtype)
        D = 2 if args.bidirectional else 1
        states = [torch.randn(args.layers * D, args.N, args.H, device=device, dtype=dtype)
                  for _ in range(2 if cell == "LSTM" else 1)]
        hx = tuple(states) if cell == "LSTM" else states[0]

        rows = compare(ref, ours, x, hx)
        print(f"== {cell}: relative error, ||a-b||/||b|| ==")
        print(f"{'':28} {'fusedrnn':>10} {'torch.nn':>10} {'bound':>10} {'fused-nn':>10}")
        print(f"{'':28} {'vs fp64':>10} {'vs fp64':>10} {'':>10} {'':>10}")
        for name, e_ours, e_torch, e_vs, b in rows:
            flag = "" if e_ours <= b else "  FAIL"
            ok &= e_ours <= b
            print(f"{name:28} {e_ours:10.2e} {e_torch:10.2e} {b:10.2e} {e_vs:10.2e}{flag}")

        xg = x.clone().requires_grad_()

        def fwd(m):
            def run():
                with torch.no_grad():
                    m(x, hx)
            return run

        def fwd_bwd(m):
            def run():
                for p in m.parameters():
                    p.grad = None
                xg.grad = None
                y, _ = m(xg, hx)
                y.backward(torch.ones_like(y))
            return run

        tf, of = time_pair([fwd(ref), fwd(ours)], args.runs, device)
        tb, ob = time_pair([fwd_bwd(ref), fwd_bwd(ours)], args.runs, device)
        print(f"\n{'time (median of ' + str(args.runs) + ')':28} {'torch.nn':>10} {'fusedrnn':>10} "
              f"{'nn/fused':>10}")
        print(f"{'forward (no_grad)':28} {tf:8.2f}ms {of:8.2f}ms {tf / of:9.2f}x")
        print(f"{'forward+backward':28} {tb:8.2f}ms {ob:8.2f}ms {tb / ob:9.2f}x\n")
    print("equivalence: PASS" if ok else "equivalence: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
