"""The ``fastdrop bench`` command on tiny sizes: its JSON, its regression check, its plot, its exit
codes. Nothing here asserts a speed: timings belong to ``bench/``, not to tests."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest

import fastdrop
from fastdrop import _bench_impls
from fastdrop import _bench_report as report
from fastdrop import _bench_run
from fastdrop import bench

REQUIRED = {
    "op": str, "impl": str, "n": int, "dtype": str, "device": str, "seconds": float, "gbps": float,
    "copy_gbps": float, "bytes": int, "mask_bytes": int, "mask_bytes_per_element": float,
    "seconds_median": float, "repeats": int, "inner_loops": int,
}
FAST = ["--no-progress", "--seconds-per-case", "0.001"]


def _run(tmp_path, *options) -> dict:
    path = tmp_path / "run.json"
    assert bench.main([*FAST, "--sizes", "2^10", "--json", str(path), *options]) == 0
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One real run of every CPU op for fastdrop, NumPy and the reference at 2^10 elements."""
    return _run(tmp_path_factory.mktemp("bench"), "--ops", ",".join(_bench_impls.OPS),
                "--impls", "fastdrop,fastdrop_out,numpy,reference")


def test_json_schema(tiny_run):
    assert set(tiny_run) >= {"machine", "results", "settings", "skipped"}
    machine = tiny_run["machine"]
    assert {"cpu", "cores", "numba_threading_layer", "numba_threads", "numpy", "numba", "env"} <= set(machine)
    assert tiny_run["results"]
    for result in tiny_run["results"]:
        for key, kind in REQUIRED.items():
            assert isinstance(result[key], kind), (key, result)
        assert result["device"] == "cpu" and result["n"] == 1024 and result["dtype"] == "float32"
        assert result["seconds"] > 0 and result["gbps"] > 0


def test_every_op_has_a_fastdrop_row_and_a_copy(tiny_run):
    measured = {(r["op"], r["impl"]) for r in tiny_run["results"]}
    assert {("copy", "copy"), ("copy", "copyto")} <= measured
    expected_ops = set(_bench_impls.OPS)
    if not hasattr(fastdrop, "bias_dropout_add"):
        expected_ops.discard("bias_dropout_add")
    assert {op for op, impl in measured if impl == "fastdrop"} == expected_ops


def test_mask_state_per_element(tiny_run):
    mask = {(r["op"], r["impl"]): r["mask_bytes_per_element"] for r in tiny_run["results"]}
    assert mask[("forward", "fastdrop")] == 0  # regenerated from the seed
    assert mask[("forward_bits", "fastdrop")] == 1 / 8
    assert mask[("backward_bits", "fastdrop")] == 1 / 8
    assert mask[("forward", "numpy")] == 1  # the boolean keep array
    assert mask[("forward", "reference")] == 0


def test_bytes_include_the_mask(tiny_run):
    rows = {(r["op"], r["impl"]): r for r in tiny_run["results"]}
    assert rows[("forward", "fastdrop")]["bytes"] == 2 * 1024 * 4
    assert rows[("forward_bits", "fastdrop")]["bytes"] == 2 * 1024 * 4 + 1024 // 8
    assert rows[("forward", "numpy")]["bytes"] == 2 * 1024 * 4 + 1024


def test_peak_memory_is_measured(tiny_run):
    rows = {(r["op"], r["impl"]): r for r in tiny_run["results"]}
    assert rows[("forward", "fastdrop")]["peak_extra_bytes"] >= 1024 * 4  # at least its output
    assert rows[("forward", "fastdrop")]["peak_method"] == "tracemalloc"


def test_peak_memory_of_numpy_holds_the_float64_draws():
    n = 1 << 16
    peaks = {}
    for impl in ("fastdrop", "fastdrop_out", "numpy"):
        workload = _bench_impls.Workload("forward", n, "float32", "cpu")
        prepared = _bench_impls.prepare(impl, workload, 0.1)
        prepared.run()  # as in the bench, which measures memory after timing: kernels loaded
        peaks[impl], _ = _bench_run.peak_extra_bytes(impl, "cpu", prepared.run)
    assert 4 * n <= peaks["fastdrop"] < 5 * n  # the output, and Python objects of a few kB
    assert peaks["fastdrop_out"] < n  # out= allocates nothing the size of x
    assert peaks["numpy"] >= (8 + 1) * n  # rng.random's float64 array and the bool keep array


def test_rows_that_cannot_run_are_skipped_with_the_reason(tmp_path, capsys, monkeypatch):
    from fastdrop import _numba_backend

    # Pretend the CPU backend cannot compute float16 (it can): the row must be skipped, not fail.
    monkeypatch.setattr(_numba_backend, "_NUMBA_DTYPES", (np.dtype(np.float32), np.dtype(np.float64)))
    document = _run(tmp_path, "--dtypes", "float16", "--ops", "forward", "--impls", "fastdrop,numpy", "--no-memory")
    assert {(s["impl"], s["op"]) for s in document["skipped"]} == {("fastdrop", "forward")}
    assert "float16" in document["skipped"][0]["reason"]
    assert {(r["impl"], r["dtype"]) for r in document["results"]} >= {("numpy", "float16"), ("copy", "float16")}
    assert "skipped:" in capsys.readouterr().out


def test_a_row_that_raises_is_reported_and_exits_3(tmp_path, monkeypatch, capsys):
    def broken(workload, p):
        raise ZeroDivisionError("broken on purpose")

    monkeypatch.setitem(_bench_impls._IMPLS, "numpy", broken)
    path = tmp_path / "run.json"
    code = bench.main([*FAST, "--sizes", "2^10", "--ops", "forward", "--impls", "fastdrop,numpy", "--json", str(path)])
    assert code == 3
    document = json.loads(path.read_text())
    assert "ZeroDivisionError: broken on purpose" in document["skipped"][0]["reason"]
    assert any(r["impl"] == "fastdrop" for r in document["results"])  # the other rows still ran
    assert "failed" in capsys.readouterr().err


def test_rows_that_do_not_apply_are_not_planned():
    settings = _bench_run.Settings(ops=("forward_bits", "forward"), sizes=(1 << 10, 1 << 20))
    planned = {(task.op, task.impl, task.n) for task in _bench_run.plan(settings)}
    assert ("forward_bits", "fastdrop_out", 1 << 10) in planned
    assert ("forward", "reference", 1 << 20) not in planned  # the oracle only runs small sizes
    assert ("forward", "reference", 1 << 10) in planned
    assert ("forward_bits", "torch", 1 << 20) not in planned  # PyTorch has no packed-bit mask


def test_table_and_markdown_print(tmp_path, capsys):
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(_document()))
    assert bench.main(["--load", str(path), "--markdown"]) == 0
    printed = capsys.readouterr().out
    assert "| op | n | dtype | fastdrop GB/s | x NumPy | x torch | % of copy |" in printed
    assert "| forward | 2^20 | float32 | 6.00 | 5.0x | 20.0x | 60% | - | 75% | 10.0 |" in printed


# --- the regression check ----------------------------------------------------------------------


def _document(fastdrop_seconds: float = 1.0) -> dict:
    """A stored run at 2^20 float32: copy 10 GB/s (8 GB/s into a fresh array), fastdrop 6 GB/s at 1 s,
    NumPy 5x and torch 20x slower."""

    def result(impl, seconds, nbytes, op="forward"):
        return {"op": op, "impl": impl, "n": 1 << 20, "dtype": "float32", "device": "cpu", "seconds": seconds,
                "seconds_median": seconds, "bytes": nbytes, "gbps": nbytes / seconds / 1e9, "copy_gbps": 10.0,
                "copy_ratio": nbytes / seconds / 1e9 / 10.0, "mask_bytes": 0, "mask_bytes_per_element": 0.0,
                "peak_extra_bytes": None, "peak_method": None, "note": "", "repeats": 3, "inner_loops": 1}

    results = [result("copy", 1.0, 10e9, op="copy"), result("copy_alloc", 1.25, 10e9, op="copy"),
               result("fastdrop", fastdrop_seconds, 6e9),
               result("numpy", 5.0, 6e9), result("torch", 20.0, 6e9)]
    return {"machine": {"cpu": "test"}, "settings": {}, "results": results, "skipped": []}


def test_compare_flags_a_25_percent_drop():
    old, new = _document(1.0), _document(1.0 / 0.75)  # 25% less throughput, 25% smaller speed-ups
    checked, regressions = report.compare(old, new)
    assert {entry["ratio"] for entry in regressions} == {
        "fastdrop % of copy", "fastdrop % of allocating copy", "fastdrop speed-up over NumPy",
        "fastdrop speed-up over torch"}
    assert len(checked) == 4


def test_compare_passes_a_10_percent_drop_and_any_gain():
    assert report.compare(_document(1.0), _document(1.0 / 0.9))[1] == []
    assert report.compare(_document(1.0), _document(0.5))[1] == []


def test_compare_exit_codes(tmp_path, capsys):
    old, worse, slightly = tmp_path / "old.json", tmp_path / "worse.json", tmp_path / "slightly.json"
    old.write_text(json.dumps(_document(1.0)))
    worse.write_text(json.dumps(_document(1.0 / 0.75)))
    slightly.write_text(json.dumps(_document(1.0 / 0.9)))
    assert bench.main(["--load", str(worse), "--compare", str(old)]) == 1
    assert "REGRESSION" in capsys.readouterr().out
    assert bench.main(["--load", str(slightly), "--compare", str(old)]) == 0
    assert bench.main(["--load", str(worse), "--compare", str(old), "--tolerance", "0.3"]) == 0


def test_compare_with_nothing_in_common_is_an_error(tmp_path):
    old, new = _document(), _document()
    for result in new["results"]:
        result["n"] = 1 << 12
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    assert bench.main(["--load", str(tmp_path / "new.json"), "--compare", str(tmp_path / "old.json")]) == 2


def test_compare_with_a_missing_or_bad_file_is_an_error(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    assert bench.main(["--compare", str(tmp_path / "missing.json"), *FAST]) == 2
    assert bench.main(["--load", str(tmp_path / "bad.json")]) == 2


def test_compare_a_fresh_run_against_itself(tmp_path, tiny_run):
    stored = tmp_path / "stored.json"
    doctored = copy.deepcopy(tiny_run)
    for result in doctored["results"]:
        if result["impl"] == "fastdrop":  # pretend fastdrop used to be 100x faster
            result["seconds"] /= 100
            result["gbps"] *= 100
            result["copy_ratio"] *= 100
    stored.write_text(json.dumps(doctored))
    assert bench.main([*FAST, "--sizes", "2^10", "--ops", "forward", "--impls", "fastdrop,numpy",
                       "--no-memory", "--compare", str(stored)]) == 1


# --- plot, options, exit codes ------------------------------------------------------------------


def test_plot_writes_a_png(tmp_path, tiny_run):
    stored, picture = tmp_path / "run.json", tmp_path / "run.png"
    stored.write_text(json.dumps(tiny_run))
    assert bench.main(["--load", str(stored), "--plot", str(picture)]) == 0
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "options",
    [["--ops", "sideways"], ["--sizes", "2^x"], ["--sizes", "0"], ["--dtypes", "int8"], ["--device", "tpu"]],
    ids=["unknown-op", "bad-size", "zero-size", "int-dtype", "unknown-device"],
)
def test_bad_options_exit_2(options, capsys):
    with pytest.raises(SystemExit) as exited:
        bench.main(options)
    assert exited.value.code == 2
    assert "error" in capsys.readouterr().err


def test_bad_p_exits_2():
    assert bench.main(["--p", "1.5", *FAST]) == 2


def test_gpu_without_a_gpu_exits_2(capsys):
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            pytest.skip("a GPU is present")
    except Exception:  # noqa: BLE001 - no CuPy or no driver: exactly the case under test
        pass
    assert bench.main(["--device", "gpu", *FAST]) == 2
    assert "GPU" in capsys.readouterr().err


def test_sizes_parse():
    assert bench._sizes("2^10, 4096,2**3") == (1024, 4096, 8)


def test_cli_dispatches_to_bench():
    done = subprocess.run([sys.executable, "-m", "fastdrop", "bench", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "--compare" in done.stdout


def test_importing_bench_imports_neither_torch_nor_cupy():
    code = ("import sys, fastdrop.bench, fastdrop._bench_impls, fastdrop._bench_run, fastdrop._bench_report;"
            "print(sorted(m for m in ('torch', 'cupy', 'matplotlib', 'tqdm') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.torch
def test_torch_rows_measure_what_torch_saves(tmp_path):
    pytest.importorskip("torch")
    document = _run(tmp_path, "--ops", "forward,backward", "--impls", "torch")
    rows = {(r["op"], r["impl"]): r for r in document["results"]}
    # Whatever PyTorch keeps for backward (a float noise tensor on the CPU, a bool mask on CUDA)
    # is found by autograd's saved-tensor hooks, never zero.
    assert rows[("forward", "torch")]["mask_bytes_per_element"] >= 1
    assert rows[("forward", "torch")]["peak_method"] == "torch.profiler"
    assert rows[("forward", "torch")]["peak_extra_bytes"] >= 1024 * 4
