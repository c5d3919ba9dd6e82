"""The GPU tests and the prepared GPU check, run without a GPU on the CPU emulator of CuPy.

With ``tests/cuda_emulator`` first on ``PYTHONPATH`` a child process's ``cupy`` is the emulator:
the CuPy backend's own Python (launch sizes, layouts, argument packing) and the CUDA kernels
themselves, compiled by g++ from the source the backend assembles, run on the CPU. Here that
child is ``bench/gpu_check.py`` (the script a GPU machine runs in one call): its GPU tests (every
test marked ``gpu``, against fastdrop.reference bit for bit) and a tiny throughput table, whose
timings mean nothing but whose code paths are the ones the GPU run will take. Every launch is
also checked by the emulator (arguments against the kernel signatures, writes outside an
allocation or through a pointer to const, the warp rules of the shuffles). What it cannot check
(speed, the PTX arithmetic, streams and graphs, cuRAND) is listed in the emulator's docstring;
a real GPU run remains the final word.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EMULATOR = ROOT / "tests" / "cuda_emulator"

#: Fewer passing GPU tests than this means whole groups were skipped or not collected.
MIN_PASSED = 800
KINDS = {"copy", "fastdrop forward", "fastdrop forward, offset 3", "fastdrop backward", "fastdrop channel mask",
         "fastdrop forward, one element in", "fastdrop forward, channels last",
         "fastdrop bias-dropout-add"}

pytestmark = [
    pytest.mark.skipif(platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"),
                       reason="the emulator's lane switching is x86-64 Linux code"),
    pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="g++ not found"),
]


@pytest.fixture(scope="module")
def emulated_env(tmp_path_factory):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(EMULATOR)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("FASTDROP_EMULATOR_CACHE", str(tmp_path_factory.mktemp("cuda-emulator")))
    return env


def test_emulator_checks_itself_and_the_kernels_coalescing(emulated_env):
    """check_emulator.py (the emulator's own checks) and check_coalescing.py (the sectors the
    kernels' warps touch, from memory traces)."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               str(EMULATOR / "check_emulator.py"), str(EMULATOR / "check_coalescing.py")]
    result = subprocess.run(command, cwd=ROOT, env=emulated_env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-4000:]
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed[1]) >= 30 and " failed" not in result.stdout, result.stdout[-2000:]


@pytest.mark.slow
def test_gpu_check_and_gpu_tests_pass_on_the_emulator(emulated_env, tmp_path):
    pytest.importorskip("ml_dtypes", reason="the bfloat16 legs need ml_dtypes (the test extra has it)")
    report_path = tmp_path / "gpu_check.json"
    command = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--json", str(report_path),
               "--sizes", "10", "--calls", "2", "--repeats", "2", "--test-timeout", "2400"]
    result = subprocess.run(command, cwd=ROOT, env=emulated_env, capture_output=True, text=True, timeout=3000)
    assert report_path.exists(), result.stdout[-6000:] + result.stderr[-4000:]
    report = json.loads(report_path.read_text())
    tests = report["tests"]
    log = Path(tests["log"]).read_text(errors="replace")
    assert tests["returncode"] == 0, log[-12000:]
    passed = re.search(r"(\d+) passed", tests["summary"] or "")
    assert passed and int(passed[1]) >= MIN_PASSED, tests["summary"]
    assert "emulator" in report["device"]["gpu"]
    for dtype in ("float32", "float16", "bfloat16"):
        measured = {row["what"] for row in report["rows"] if row["dtype"] == dtype}
        assert KINDS <= measured, (dtype, measured, report["errors"])
    # Only torch's half may fail here (its CPU build has no CUDA); the script's own code may not.
    assert all(" torch: " in error or error.startswith("torch: ") for error in report["errors"]), report["errors"]
    assert result.returncode == (1 if report["errors"] else 0), result.stdout[-4000:]


def test_bench_device_gpu_runs_on_the_emulator(emulated_env, tmp_path):
    """``fastdrop bench --device gpu --full``: every fastdrop and CuPy row of every op and dtype
    measured (torch's CUDA rows are skipped, this torch being a CPU build)."""
    pytest.importorskip("ml_dtypes", reason="the bfloat16 rows need ml_dtypes (the test extra has it)")
    path = tmp_path / "bench.json"
    command = [sys.executable, "-m", "fastdrop", "bench", "--device", "gpu", "--full", "--sizes", "2^10",
               "--no-progress", "--seconds-per-case", "0.001", "--json", str(path)]
    result = subprocess.run(command, cwd=ROOT, env=emulated_env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-4000:]
    run = json.loads(path.read_text())
    assert "emulator" in run["machine"]["gpu"]["name"]
    assert [s for s in run["skipped"] if s["impl"] != "torch"] == []
    measured = {(r["op"], r["impl"], r["dtype"]) for r in run["results"]}
    ops = {r["op"] for r in run["results"]} - {"copy"}
    assert {"forward", "backward", "forward_bits", "backward_bits", "spatial", "bias_dropout_add"} <= ops
    for op in ops:
        for dtype in ("float32", "float16", "bfloat16"):
            assert {(op, "fastdrop", dtype), (op, "fastdrop_out", dtype)} <= measured, (op, dtype)


def test_trainer_on_the_emulator_matches_the_cpu(emulated_env, tmp_path):
    """``fastdrop train --device gpu``: the CuPy trainer's path, whose masks are the CPU's; with the
    emulator's NumPy arithmetic even the losses agree to the last bit."""
    mnist = ROOT.parent / "shared" / "data" / "mnist"
    if not (mnist / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("the shared MNIST files are not here")
    runs = {}
    for device in ("cpu", "gpu"):
        path = tmp_path / f"{device}.json"
        command = [sys.executable, "-m", "fastdrop", "train", "--device", device, "--epochs", "1",
                   "--limit", "1000", "--data-dir", str(mnist), "--no-download", "--quiet", "--json", str(path)]
        result = subprocess.run(command, cwd=ROOT, env=emulated_env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        runs[device] = json.loads(path.read_text())["dropout"]
    assert runs["gpu"]["settings"]["device"] == "gpu"
    for key in ("train_acc", "val_acc", "test_acc"):
        assert runs["gpu"][key] == runs["cpu"][key], key
    assert runs["gpu"]["history"][0]["train_loss"] == runs["cpu"]["history"][0]["train_loss"]
