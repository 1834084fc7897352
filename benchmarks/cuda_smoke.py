"""A short CUDA run of every kernel for compute-sanitizer (memcheck, racecheck):

    compute-sanitizer --tool memcheck python benchmarks/cuda_smoke.py

LSTM and GRU, forward and backward, on the vector (H=64) and scalar (H=7) paths, packed
input, proj_size and every dtype, with random data; prints each case's largest difference
from the same module on the CPU (a sanity print, not the equivalence check: that is
tests/test_cuda.py and the device-parametrized tests).
"""
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn


def case(cell, H, dtype, packed=False, proj=0, T=5, N=3, I=6):
    kw = dict(proj_size=proj) if proj else {}
    cls = fusedrnn.LSTM if cell == "LSTM" else fusedrnn.GRU
    cpu = cls(I, H, num_layers=2, bidirectional=True, dtype=torch.float64, **kw)
    gpu = cls(I, H, num_layers=2, bidirectional=True, **kw).to("cuda", dtype)
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(T, N, I, dtype=torch.float64)
    lengths = torch.tensor([T, T - 2, 1][:N])
    outs = []
    for m, xs in ((cpu, x), (gpu, x.to("cuda", dtype))):
        xs = xs.detach().requires_grad_()
        inp = pack_padded_sequence(xs, lengths, enforce_sorted=False) if packed else xs
        y, _ = m(inp)
        y = y.data if packed else y
        y.float().square().sum().backward()
        outs.append((y.detach().double().cpu(), xs.grad.double().cpu()))
    dy = (outs[0][0] - outs[1][0]).abs().max().item()
    dx = (outs[0][1] - outs[1][1]).abs().max().item()
    print(f"{cell:4s} H={H:3d} {str(dtype):15s} packed={packed!s:5s} proj={proj:2d} "
          f"max|dy|={dy:.2e} max|dx|={dx:.2e}", flush=True)


if __name__ == "__main__":
    torch.manual_seed(0)
    for cell in ("LSTM", "GRU"):
        for H in (7, 64):
            for dt in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
                case(cell, H, dt)
            case(cell, H, torch.float32, packed=True)
    case("LSTM", 64, torch.float32, proj=16)
    case("LSTM", 64, torch.float32, packed=True, proj=5)
    torch.cuda.synchronize()
    print("smoke done")
