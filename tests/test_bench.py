"""The benchmark harness (fusedrnn/bench.py): FLOP counts and one tiny end-to-end run.
No timing is asserted: only that the instrument counts and writes what it says."""
import json

import pytest

from fusedrnn import bench


def test_flop_count_fastrnns():
    s = bench.SHAPES["fastrnns"]
    # LSTM: 2 * (T*N) * 4H * (I + H); GRU has 3 gates; training is 3x.
    assert bench.flops("LSTM", s, 6400, "inference") == 2 * 6400 * 2048 * 1024
    assert bench.flops("GRU", s, 6400, "inference") == 2 * 6400 * 1536 * 1024
    assert bench.flops("GRU", s, 6400, "training") == 3 * 2 * 6400 * 1536 * 1024


def test_flop_count_deep_bidirectional():
    s = bench.SHAPES["deep"]  # layer 2 reads both directions of layer 1: I = 2H
    rows, G, H = 3200, 2048, 512
    want = 2 * 2 * rows * G * (512 + H) + 2 * 2 * rows * G * (2 * H + H)
    assert bench.flops("LSTM", s, rows, "inference") == want


def test_packed_case_counts_real_rows():
    case = bench.Case("GRU", "packed", bench.torch.float32, bench.torch.device("cpu"))
    assert case.rows == int(case.lengths.sum())
    assert 30 <= int(case.lengths.min()) and int(case.lengths.max()) < 100


def test_end_to_end_writes_outputs(tmp_path, capsys):
    rc = bench.main(["--grid", "latency", "--cells", "GRU", "--dtypes", "float32",
                     "--budget", "0", "--min-runs", "1", "--max-runs", "1",
                     "--out", str(tmp_path), "--name", "t"])
    assert rc == 0
    data = json.loads((tmp_path / "t.json").read_text())
    assert {"device", "torch", "threads", "git_commit", "cpu"} <= set(data["env"])
    assert [r["mode"] for r in data["rows"]] == ["inference", "training"]
    for r in data["rows"]:
        assert r["torch_ms"] > 0 and r["fused_ms"] > 0
        assert r["ratio"] == pytest.approx(r["torch_ms"] / r["fused_ms"])
        assert r["ref_ms"] > 0  # float32 padded rows time the reference loop too
        assert r["row_peak_gflops"] > 0
        gflops = r["gflop"] / r["fused_ms"] * 1e3
        assert r["fused_frac_row_peak"] == pytest.approx(gflops / r["row_peak_gflops"])
    inf = data["rows"][0]
    assert inf["err_ours"] < 1e-5 and inf["err_torch"] < 1e-5
    md = (tmp_path / "t.md").read_text()
    assert md.count("| latency | GRU | float32 |") == 2


def test_rounds_report_the_median_round(tmp_path, capsys):
    rc = bench.main(["--grid", "latency", "--cells", "GRU", "--dtypes", "float32",
                     "--budget", "0", "--min-runs", "1", "--max-runs", "1", "--rounds", "3",
                     "--no-reference", "--out", str(tmp_path), "--name", "t"])
    assert rc == 0
    data = json.loads((tmp_path / "t.json").read_text())
    assert [r["mode"] for r in data["rows"]] == ["inference", "training"]
    for r in data["rows"]:
        ratios = sorted(x["ratio"] for x in r["rounds"])
        assert len(ratios) == 3
        assert r["ratio"] == ratios[1]  # the median round, its own times with it
        assert r["ratio"] == pytest.approx(r["torch_ms"] / r["fused_ms"])
        assert (r["ratio_min"], r["ratio_max"]) == (ratios[0], ratios[2])
    assert "err_ours" in data["rows"][0]  # errors from the first round carried over
    md = (tmp_path / "t.md").read_text()
    assert "3 rounds" in md and md.count("| latency | GRU | float32 |") == 2


def test_alternation_rotates_the_order():
    """Each fn takes every slot of the alternation equally often (time_alternating): the
    call right after another one reads slower, so a fixed order biases the ratio."""
    calls = []
    fns = [lambda i=i: calls.append(i) for i in range(3)]
    _, runs = bench.time_alternating(fns, "cpu", 0, 6, 6)
    assert runs == 6
    timed = calls[6:]  # after each fn's warm-up call and its first timed call
    slots = [timed[r * 3:(r + 1) * 3] for r in range(runs)]
    assert all(sorted(s) == [0, 1, 2] for s in slots)
    for fn in range(3):
        assert sorted(s.index(fn) for s in slots) == [0, 0, 1, 1, 2, 2]
