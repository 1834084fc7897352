"""The built wheel, as a user gets it: installed in a clean venv, imported from outside the tree.

Needs dist/fusedrnn-*-cp310-abi3-*.whl (`make wheel`). Without one these tests skip, unless
FUSEDRNN_REQUIRE_WHEEL=1 (CI), where a missing wheel is a failure.
"""
import os
import shutil
import subprocess
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SO = "fusedrnn/_C.abi3.so"
CUDA_SO = "fusedrnn/_C_cuda.abi3.so"
# setup.py builds the CUDA module whenever nvcc is found (CI has nvcc, no GPU).
HAS_NVCC = shutil.which("nvcc") is not None or os.path.exists("/usr/local/cuda/bin/nvcc")


@pytest.fixture(scope="module")
def wheel():
    wheels = sorted(ROOT.glob("dist/fusedrnn-*-cp310-abi3-*.whl"))
    if not wheels:
        msg = "no dist/fusedrnn-*-cp310-abi3-*.whl: build it with `make wheel`"
        if os.environ.get("FUSEDRNN_REQUIRE_WHEEL") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    assert len(wheels) == 1, f"stale wheels in dist/: {[w.name for w in wheels]}; run `make wheel`"
    return wheels[0]


def test_wheel_tags_and_contents(wheel):
    # name-version-python-abi-platform.whl
    _, _, python_tag, abi_tag, platform = wheel.stem.split("-")
    assert (python_tag, abi_tag) == ("cp310", "abi3"), wheel.name
    assert platform.startswith("linux_") or platform.startswith("manylinux"), wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    assert SO in names, f"{SO} missing from {wheel.name}: {names}"
    sources = [n for n in names if n.endswith((".cpp", ".cu", ".h", ".cuh"))]
    assert not sources, f"sources shipped in the wheel: {sources}"
    tests = [n for n in names if n.startswith("tests/") or "/tests/" in n or "test_" in n]
    assert not tests, f"tests shipped in the wheel: {tests}"


def needed(so):
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf not found")
    dyn = subprocess.run([readelf, "-d", str(so)], capture_output=True, text=True, check=True)
    return [line.split("[")[-1].rstrip("]") for line in dyn.stdout.splitlines() if "(NEEDED)" in line]


@pytest.mark.skipif(not HAS_NVCC, reason="no nvcc: the wheel is built without the CUDA module")
def test_wheel_carries_cuda_module(wheel, tmp_path):
    """The CUDA kernels are compiled and linked into the wheel even on a CPU-only machine.
    The module needs libtorch.so (which pulls libtorch_cuda.so on a CUDA torch) and the
    CUDA runtime, and calls torch's current-stream shim."""
    names = zipfile.ZipFile(wheel).namelist()
    assert CUDA_SO in names, f"{CUDA_SO} missing from {wheel.name}"
    so = Path(zipfile.ZipFile(wheel).extract(CUDA_SO, tmp_path))
    libs = needed(so)
    assert "libtorch.so" in libs, libs
    assert [n for n in libs if n.startswith("libcudart.so.")], libs
    assert not [n for n in libs if "libtorch_python" in n], libs
    nm = shutil.which("nm")
    if nm is not None:
        syms = subprocess.run([nm, "-D", "--undefined-only", str(so)], capture_output=True,
                              text=True, check=True).stdout
        assert "aoti_torch_get_current_cuda_stream" in syms


def test_no_libtorch_python(wheel, tmp_path):
    # py_limited_api must keep libtorch_python (tied to one CPython and torch build) out.
    libs = needed(Path(zipfile.ZipFile(wheel).extract(SO, tmp_path)))
    assert libs
    assert not [n for n in libs if "libtorch_python" in n], libs


# Runs inside the venv, from a directory outside the source tree.
SMOKE = textwrap.dedent(
    """
    import sys, sysconfig
    from pathlib import Path
    import torch
    import fusedrnn

    site = Path(sysconfig.get_paths()["platlib"]).resolve()
    where = Path(fusedrnn.__file__).resolve()
    assert site in where.parents, f"fusedrnn imported from {where}, not the venv's {site}"

    def max_diff(a, b):
        return max((x - y).abs().max().item() for x, y in zip(a, b))

    torch.manual_seed(0)
    for ours, ref in [
        (fusedrnn.LSTM(4, 8, 2), torch.nn.LSTM(4, 8, 2)),
        (fusedrnn.GRU(4, 8), torch.nn.GRU(4, 8)),
    ]:
        name = type(ours).__name__
        ref.load_state_dict(ours.state_dict())
        x = torch.randn(5, 3, 4)
        xs = [x.clone().requires_grad_() for _ in range(2)]
        y, hn = ours(xs[0])
        y_ref, hn_ref = ref(xs[1])
        hn, hn_ref = (hn, hn_ref) if name == "LSTM" else ((hn,), (hn_ref,))
        assert torch.isfinite(y).all() and all(torch.isfinite(h).all() for h in hn), name
        (y.sum() + sum(h.sum() for h in hn)).backward()
        (y_ref.sum() + sum(h.sum() for h in hn_ref)).backward()
        grads = [p.grad for p in ours.parameters()] + [xs[0].grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        ref_grads = [p.grad for p in ref.parameters()] + [xs[1].grad]
        d = max(max_diff([y], [y_ref]), max_diff(hn, hn_ref), max_diff(grads, ref_grads))
        assert d < 1e-5, f"{name}: max abs diff vs torch.nn {d:.2e} >= 1e-05"
    if torch.cuda.is_available():  # the wheel's CUDA module, on a GPU machine
        torch.backends.cudnn.allow_tf32 = False
        for cls, ref_cls in [(fusedrnn.LSTM, torch.nn.LSTM), (fusedrnn.GRU, torch.nn.GRU)]:
            ours, ref = cls(4, 8, device="cuda"), ref_cls(4, 8, device="cuda")
            ref.load_state_dict(ours.state_dict())
            x = torch.randn(5, 3, 4, device="cuda")
            d = (ours(x)[0] - ref(x)[0]).abs().max().item()
            assert d < 1e-5, f"{cls.__name__} on CUDA: max abs diff vs torch.nn {d:.2e}"
        print("wheel CUDA OK")
    print("wheel OK:", where)
    """
)


def test_wheel_in_clean_venv(wheel, tmp_path):
    # --system-site-packages reuses the installed torch (CI is offline); no pip in the venv,
    # the system pip installs into it when run by the venv's python.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    py = env_dir / "bin" / "python"
    # --ignore-installed: the editable fusedrnn in system site-packages is not ours to remove.
    subprocess.run(
        [py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
         str(wheel)],
        check=True,
    )
    script = tmp_path / "smoke.py"
    script.write_text(SMOKE)
    # -I: ignore PYTHONPATH and user site, and do not put the script's directory first.
    # The venv's site-packages precedes the system one (which holds the editable install's
    # path hook); the script asserts which copy was imported.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run(
        [py, "-I", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, f"smoke script failed:\n{proc.stdout}\n{proc.stderr}"
    assert "wheel OK" in proc.stdout, proc.stdout
