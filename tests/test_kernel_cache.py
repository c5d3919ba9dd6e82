"""fastdrop._kernel_cache: cached kernels are dropped when any source they compile from changes."""

from __future__ import annotations

from fastdrop import _kernel_cache


def _package(tmp_path):
    for name in ("_numba_a.py", "_numba_b.py", "_contract.py", "reference.py", "other.py"):
        (tmp_path / name).write_text(f"# {name}\n")
    (tmp_path / "__pycache__").mkdir()
    return tmp_path


def _cached(package, name="_numba_a.f-1.py311.nbi"):
    path = package / "__pycache__" / name
    path.write_bytes(b"cached")
    return path


def _check(monkeypatch, package):
    monkeypatch.setattr(_kernel_cache, "PACKAGE", package)
    monkeypatch.setattr(_kernel_cache, "_checked", False)
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    _kernel_cache.discard_stale_kernels()


def test_cache_follows_every_kernel_source(tmp_path, monkeypatch):
    package = _package(tmp_path)
    first = _cached(package)
    _check(monkeypatch, package)
    assert not first.exists()  # no stamp yet: whatever is there is of unknown origin
    kept = _cached(package, "_numba_b.g-9.py311.1.nbc")
    unrelated = _cached(package, "_bench_impls.copy-3.py311.nbi")
    _check(monkeypatch, package)
    assert kept.exists() and unrelated.exists()  # same sources: the cache stays
    (package / "_numba_a.py").write_text("# edited helper\n")
    _check(monkeypatch, package)
    assert not kept.exists() and unrelated.exists()  # a helper changed: every kernel goes
    again = _cached(package)
    (package / "other.py").write_text("# not a kernel source\n")
    _check(monkeypatch, package)
    assert again.exists()
    (package / "reference.py").write_text("# constants the kernels fold in\n")
    _check(monkeypatch, package)
    assert not again.exists()


def test_a_user_cache_folder_is_left_alone(tmp_path, monkeypatch):
    package = _package(tmp_path)
    cached = _cached(package)
    monkeypatch.setattr(_kernel_cache, "PACKAGE", package)
    monkeypatch.setattr(_kernel_cache, "_checked", False)
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "elsewhere"))
    _kernel_cache.discard_stale_kernels()
    assert cached.exists()
