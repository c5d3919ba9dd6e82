"""`fastdrop validate` and the checks behind it (fastdrop._validation_checks)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("scipy")

import fastdrop.torch as ft  # noqa: E402
from fastdrop import _validation_checks as checks  # noqa: E402
from fastdrop import cli, validate  # noqa: E402


@pytest.fixture(scope="module")
def validate_run(tmp_path_factory):
    """One full `fastdrop validate --json` run (CPU; CUDA too when this machine has it)."""
    path = tmp_path_factory.mktemp("validate") / "rows.json"
    status = cli.main(["validate", "--json", str(path)])
    return status, json.loads(path.read_text())


def test_every_check_passes_here(validate_run):
    status, document = validate_run
    failed = [row for row in document["rows"] if not row["passed"]]
    assert status == 0 and document["passed"] and failed == []


def test_json_rows_have_the_table_columns(validate_run):
    _, document = validate_run
    rows = document["rows"]
    assert {row["backend"] for row in rows} >= {"cpu"}
    assert {"float32", "float64"} <= {row["dtype"] for row in rows}
    for row in rows:
        assert set(row) == {"check", "backend", "dtype", "statistic", "threshold", "rule", "passed", "detail"}
        if row["rule"].startswith("p-value"):
            assert row["threshold"] == checks.ALPHA and row["passed"] == (row["statistic"] >= row["threshold"])
        else:
            assert row["threshold"] == 0 and row["passed"] == (row["statistic"] <= 0)
    names = {row["check"] for row in rows}
    for expected in ("elementwise vs native_dropout", "keep rate vs torch (p=0.1)", "mean vs torch (p=0.5)",
                     "variance vs torch (p=0.5)", "distribution vs torch (p=0.1)", "eval mode is identity",
                     "alpha dropout variance = 1 (p=0.2)", "spatial dropout drops whole channels"):
        assert expected in names
    if not checks.cuda_status()[0]:
        assert any(note.startswith("cuda: skipped") for note in document["notes"])


def test_table_printed_and_failure_sets_exit_status(monkeypatch, capsys, tmp_path):
    failing = checks.CheckResult("made-up check", "cpu", "float32", 3.0, 0.0, "count <= threshold", False, "")
    passing = checks.CheckResult("other check", "cpu", "float64", 0.5, checks.ALPHA, "p-value >= threshold", True, "")
    monkeypatch.setattr(checks, "run_all", lambda seed, include_cuda: ([passing, failing], []))
    assert validate.main(["--json", str(tmp_path / "out.json")]) == 1
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == ["check", "backend", "dtype", "statistic", "threshold", "result"]
    assert "FAIL" in out and "pass" in out and "1 of 2 checks passed" in out
    assert json.loads((tmp_path / "out.json").read_text())["passed"] is False


def test_keep_rate_test_catches_an_8_bit_threshold(monkeypatch):
    """Power: an 8-bit threshold keeps 230/256 = 0.8984 at p = 0.1, 5.5 standard errors below 0.9
    at n = 2**20, so the exact binomial row fails. (The two-sample row against torch, with its
    noise on both sides, has little power for a bias this small; it is there for gross ones.)"""
    honest = ft.dropout

    def eight_bit(x, p, seed=None):
        biased_p = 1 - round((1 - p) * 256) / 256
        return honest(x, biased_p, seed=seed) * ((1 - biased_p) / (1 - p))

    monkeypatch.setattr(ft, "dropout", eight_bit)
    rows = {row.check: row for row in checks.dropout_statistics("cpu", torch.float32, 0, 0.1)}
    assert not rows["keep rate = t/2^32 (p=0.1)"].passed


def test_two_sample_tests_catch_a_wrong_scale(monkeypatch):
    """Power: scaling by 1 / (1 - p) + 2% shifts mean, variance and distribution detectably."""
    honest = ft.dropout
    monkeypatch.setattr(ft, "dropout", lambda x, p, seed=None: honest(x, p, seed=seed) * 1.02)
    rows = checks.dropout_statistics("cpu", torch.float32, 0, 0.5)
    failed = {row.check for row in rows if not row.passed}
    assert {"mean vs torch (p=0.5)", "distribution vs torch (p=0.5)"} <= failed


def test_cuda_status_gives_a_reason():
    usable, reason = checks.cuda_status()
    assert usable or reason
