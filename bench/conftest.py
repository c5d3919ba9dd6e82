"""pytest-benchmark suite options and fixtures; see bench/README.md. Not part of the test run
(pyproject's testpaths is tests/): run it with ``pytest bench/``."""

from __future__ import annotations

import pytest

from fastdrop import _bench_impls as impls
from fastdrop import _bench_run as bench_run

P = 0.1


def pytest_addoption(parser):
    group = parser.getgroup("fastdrop bench")
    group.addoption("--bench-device", choices=("cpu", "gpu"), default="cpu")
    group.addoption("--bench-sizes", default=None,
                    help="comma list of 2^k or integers (default CPU 2^10,2^14,2^18,2^22,2^26; GPU 2^16..2^28 by 4)")
    group.addoption("--bench-dtypes", default=None, help="default CPU float32,float64; GPU float32,float16,bfloat16")
    group.addoption("--bench-ops", default=",".join(impls.DEFAULT_OPS))
    group.addoption("--bench-impls", default=None, help="comma list (default: every implementation of the device)")


def _sizes(text: str) -> list[int]:
    from fastdrop.bench import _sizes

    return list(_sizes(text))


def _grid(config) -> tuple[str, list, list, list, list]:
    device = config.getoption("--bench-device")
    gpu = device == "gpu"
    sizes = config.getoption("--bench-sizes") or ("2^16,2^20,2^24,2^28" if gpu else "2^10,2^14,2^18,2^22,2^26")
    dtypes = config.getoption("--bench-dtypes") or ",".join(bench_run.GPU_DTYPES if gpu else bench_run.CPU_DTYPES)
    names = impls.GPU_IMPLS if gpu else impls.CPU_IMPLS
    chosen = config.getoption("--bench-impls")
    if chosen:
        names = [name for name in names if name in chosen.split(",")]
    ops = config.getoption("--bench-ops").split(",")
    return device, ops, list(names), _sizes(sizes), dtypes.split(",")


def pytest_generate_tests(metafunc):
    """op x impl x size x dtype, ids like ``forward-fastdrop-2^20-float32``, less the rows that do
    not apply (the oracle at large sizes, ``out=`` where fastdrop takes none, PyTorch's ``_bits``)."""
    device, ops, names, sizes, dtypes = _grid(metafunc.config)
    if "case" in metafunc.fixturenames:
        cases = [(op, name, n, dtype) for dtype in dtypes for n in sizes for op in ops for name in names
                 if impls.applies(name, op, n)]
        ids = [f"{op}-{name}-2^{n.bit_length() - 1}-{dtype}" for op, name, n, dtype in cases]
        metafunc.parametrize("case", cases, ids=ids)
    if "copy_case" in metafunc.fixturenames:
        cases = [(name, n, dtype) for dtype in dtypes for n in sizes for name in impls.COPY_IMPLS[device]]
        metafunc.parametrize("copy_case", cases, ids=[f"copy-{name}-2^{n.bit_length() - 1}-{d}" for name, n, d in cases])


@pytest.fixture(scope="session")
def device(pytestconfig):
    device = pytestconfig.getoption("--bench-device")
    try:
        bench_run.check_device(device)
    except bench_run.NoDevice as error:
        pytest.skip(str(error))
    return device


@pytest.fixture(scope="session")
def warmed_up(device, pytestconfig):
    """Every Numba kernel compiled (or loaded from cache) before anything is timed."""
    _, ops, names, _, dtypes = _grid(pytestconfig)
    bench_run.warm_up(bench_run.Settings(device=device, ops=tuple(ops), dtypes=tuple(dtypes), impls=tuple(names),
                                         p=P, progress=False))
    return True


class _Arrays:
    """Input arrays of the latest (n, dtype), shared by every case at that size (cases come
    ordered by dtype, then size, so at most one size is held at a time)."""

    def __init__(self):
        self.key, self.arrays = None, {}

    def workload(self, op: str, n: int, dtype: str, device: str) -> impls.Workload:
        if (n, dtype) != self.key:
            self.key, self.arrays = (n, dtype), {}
        return impls.Workload(op, n, dtype, device, arrays=self.arrays)


@pytest.fixture(scope="session")
def arrays():
    return _Arrays()


@pytest.fixture(scope="session")
def copy_gbps(device, warmed_up):
    """The copy roofline at (n, dtype), measured once per session with the command's own timer."""
    measured = {}

    def get(n: int, dtype: str) -> float:
        if (n, dtype) not in measured:
            workload = impls.Workload(impls.COPY_OP, n, dtype, device)
            prepared = impls.prepare("copy", workload, P)
            timing = bench_run.time_calls(prepared.run, bench_run.clock_for("copy", device),
                                          min_sample=bench_run.MIN_SAMPLE_SECONDS[device], budget=0.5)
            itemsize = impls.ITEMSIZE[dtype]
            measured[(n, dtype)] = impls.bytes_moved(impls.COPY_OP, n, itemsize, 0) / timing["seconds"] / 1e9
        return measured[(n, dtype)]

    return get
