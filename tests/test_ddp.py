"""DistributedDataParallel over fusedrnn layers: 2 CPU processes (gloo), each on half of a
fixed batch, end with the parameters of single-process training on the whole batch.

Rendezvous is a FileStore in the test's tmp dir (no port to collide on), every rank tears
its process group down, and the whole run is bounded by a deadline after which the
workers are killed and the test fails.

Why the workers end with os._exit: on torch 2.13 a plain 2-rank gloo DDP script aborts
with SIGABRT at exit in about 1 run in 5 (8 of 40 here; 0 of 40 with os._exit), with or
without destroy_process_group. gdb shows the gloo worker thread (pt_gloo_runloop)
destroying an AsyncAllreduceWork while the main thread is in Py_FinalizeEx: the work
was launched by DDP from inside backward, so its captured ThreadLocalState holds the
contextvars.Context that torch.autograd stashes in TLS during backward; releasing it
takes the GIL, and a thread taking the GIL during finalization is unwound with
pthread_exit through a noexcept destructor: std::terminate. The threads cannot be joined
first: after DDP, the ProcessGroupGloo outlives destroy_process_group (its threads stay
up). So each worker writes its results, tears down, and leaves without finalizing.
"""
import os
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import fusedrnn

WORLD = 2
STEPS = 5
N, T, I, H = 8, 7, 4, 6  # the global batch N is split between the ranks
DEADLINE_S = 120  # generous: the machine may be shared; a healthy run takes seconds


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = fusedrnn.LSTM(I, H, 2, batch_first=True)
        self.gru = fusedrnn.GRU(H, H, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * H, 1)

    def forward(self, x):  # x [N,T,I]
        return self.head(self.gru(self.lstm(x)[0])[0][:, -1])


def make_problem():
    torch.manual_seed(0)
    model = Net()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, T, I, generator=gen)
    target = torch.randn(N, 1, generator=gen)
    return model, x, target


def train(model, x, target):
    """SGD on the mean squared error: DDP's gradient average over equal halves of the batch
    is the gradient of the whole-batch mean."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.5)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses)


def _worker(rank, store_path, out_dir):
    torch.set_num_threads(1)
    store = dist.FileStore(store_path, WORLD)
    dist.init_process_group(
        "gloo", store=store, rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    model, x, target = make_problem()
    ddp = DistributedDataParallel(model)
    part = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
    losses = train(ddp, x[part], target[part])
    # Every rank waits here until all have finished training, then tears down together.
    dist.barrier()
    torch.save(
        {"state": model.state_dict(), "losses": losses, "ddp": type(ddp.module.lstm).__name__},
        f"{out_dir}/rank{rank}.pt",
    )
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # no interpreter finalization: see the module docstring


def test_ddp_two_ranks_match_single_process(tmp_path):
    ctx = mp.spawn(
        _worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=False
    )
    deadline = time.monotonic() + DEADLINE_S
    # join() returns True once every worker has exited 0 and raises if one failed (with the
    # worker's traceback, or its exit code / signal).
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            alive = [p.pid for p in ctx.processes if p.is_alive()]
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            for p in ctx.processes:
                p.join()
            raise AssertionError(f"DDP workers {alive} still running after {DEADLINE_S} s; killed")

    model, x, target = make_problem()
    losses = train(model, x, target)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    assert results[0]["ddp"] == "LSTM"
    for name, p in model.state_dict().items():
        for r, res in enumerate(results):
            got = res["state"][name]
            e = ((got - p).norm() / p.norm()).item()
            assert e < 1e-5, f"rank {r} {name}: rel err {e:.2e} vs single-process training"
        assert torch.equal(results[0]["state"][name], results[1]["state"][name]), (
            f"{name} differs between ranks"
        )
    # Each rank's loss is over its own half; their mean is the whole batch's loss.
    mean_loss = (results[0]["losses"] + results[1]["losses"]) / 2
    e = ((mean_loss - losses).abs() / losses).max().item()
    assert e < 1e-5, f"loss curves: max rel diff {e:.2e}: {mean_loss.tolist()} vs {losses.tolist()}"
    assert losses[-1] < losses[0], f"loss did not decrease: {losses.tolist()}"
