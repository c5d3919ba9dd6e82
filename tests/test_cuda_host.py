"""The CUDA sources, checked without a GPU.

(a) Every kernel compiles with nvcc for sm_80 and sm_90 (with CuPy's -ftz=true) without register
spills. (b) The device-side Philox, keep decision and select code in kernels/*.cuh is built into a
small host program (nvcc and g++) whose output must equal fastdrop.reference bit for bit.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fastdrop import reference
from fastdrop._contract import keep_threshold
from fastdrop._kernel_source import assemble_source

KERNELS = Path(__file__).resolve().parent.parent / "kernels"
NVCC = shutil.which("nvcc")
GXX = shutil.which("g++")

needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc (CUDA toolkit) not found on PATH")

# Reads one command a line on stdin, answers one line each (all numbers in hex).
HARNESS = r"""
#include <cstdio>
#include <cstring>
#include "select.cuh"
using namespace fastdrop;

int main() {
    char command[32];
    while (std::scanf("%31s", command) == 1) {
        if (!std::strcmp(command, "philox")) {  // c0 c1 c2 c3 k0 k1 -> 4 words
            unsigned c[6];
            for (int i = 0; i < 6; ++i) std::scanf("%x", &c[i]);
            PhiloxBlock b = philox4x32_10(c[0], c[1], c[2], c[3], c[4], c[5]);
            std::printf("%08x %08x %08x %08x\n", b.w0, b.w1, b.w2, b.w3);
        } else if (!std::strcmp(command, "words") || !std::strcmp(command, "keep")) {
            unsigned long long seed, offset, n, threshold = 0;  // seed offset n [threshold]
            std::scanf("%llx %llx %llx", &seed, &offset, &n);
            const bool keep = command[0] == 'k';
            if (keep) std::scanf("%llx", &threshold);
            for (unsigned long long i = 0; i < n; ++i) {
                unsigned word = random_word(offset + i, (u32)seed, (u32)(seed >> 32));
                if (keep) std::printf("%d", keeps(word, threshold) ? 1 : 0);
                else std::printf("%08x ", word);
            }
            std::printf("\n");
        } else if (!std::strcmp(command, "select")) {  // dtype scale_bits keep n x... -> n y
            char dtype[8];
            unsigned long long scale_bits, n;
            int keep;
            std::scanf("%7s %llx %d %llx", dtype, &scale_bits, &keep, &n);
            for (unsigned long long i = 0; i < n; ++i) {
                unsigned long long x, y;
                std::scanf("%llx", &x);
                const float s32 = float_from_bits((u32)scale_bits);
                if (!std::strcmp(dtype, "f16")) y = Float16::select((u16)x, keep, s32);
                else if (!std::strcmp(dtype, "bf16")) y = BFloat16::select((u16)x, keep, s32);
                else if (!std::strcmp(dtype, "f32")) y = Float32::select((u32)x, keep, s32);
                else y = Float64::select(x, keep, double_from_bits(scale_bits));
                std::printf("%llx ", y);
            }
            std::printf("\n");
        }
    }
    return 0;
}
"""


# --- (a) nvcc: every kernel, no spills ----------------------------------------------------------

SPILL_LINE = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
ENTRY_LINE = re.compile(r"Compiling entry function '(\w+)' for '(sm_\d+)'")


@pytest.mark.nvcc
@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_75", "sm_80", "sm_90"])
def test_kernels_compile_without_spills(arch, tmp_path):
    result = subprocess.run(
        [NVCC, f"-arch={arch}", "-cubin", "-ftz=true", "-Xptxas", "-v",
         "-o", str(tmp_path / "dropout.cubin"), str(KERNELS / "dropout.cu")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    entries = ENTRY_LINE.findall(result.stderr)
    spills = SPILL_LINE.findall(result.stderr)
    names = {name for name, _ in entries}
    for suffix in ("f16", "bf16", "f32", "f64"):
        for kind in ("forward_contiguous_r0", "forward_contiguous_r3", "apply_bits_contiguous",
                     "forward_strided", "apply_bits_strided", "forward_rows", "apply_bits_rows"):
            assert f"fastdrop_{kind}_{suffix}" in names
    assert {"fastdrop_random_bits", "fastdrop_keep_flags", "fastdrop_pack_keep_bits"} <= names
    assert len(spills) == len(entries)
    spilled = [name for (name, _), (stores, loads) in zip(entries, spills) if stores != "0" or loads != "0"]
    assert spilled == [], f"register spills on {arch}: {spilled}"


@pytest.mark.nvcc
@needs_nvcc
def test_assembled_source_compiles_and_names_real_files(tmp_path):
    """The single string given to NVRTC compiles, and errors in it point at the kernel files."""
    source = tmp_path / "assembled.cu"
    source.write_text(assemble_source())
    result = subprocess.run([NVCC, "-arch=sm_90", "-cubin", "-ftz=true", "-o", str(tmp_path / "a.cubin"),
                             str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "inner.cuh").write_text("#pragma once\n\nint fine;\nthis is not C++;\n")
    (tmp_path / "broken" / "main.cu").write_text('// top\n#include "inner.cuh"\nint also_fine;\n')
    broken = tmp_path / "broken.cu"
    broken.write_text(assemble_source(tmp_path / "broken", "main.cu"))
    result = subprocess.run([NVCC, "-arch=sm_90", "-cubin", "-o", str(tmp_path / "b.cubin"), str(broken)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert f"{tmp_path / 'broken' / 'inner.cuh'}(4)" in result.stderr


# --- (b) host harness against the NumPy reference -----------------------------------------------

def _compilers():
    found = []
    if NVCC is not None:
        found.append(pytest.param("nvcc", id="nvcc"))
    else:
        found.append(pytest.param("nvcc", id="nvcc", marks=pytest.mark.skip(reason="nvcc not found")))
    if GXX is not None:
        found.append(pytest.param("g++", id="g++"))
    else:
        found.append(pytest.param("g++", id="g++", marks=pytest.mark.skip(reason="g++ not found")))
    return found


@pytest.fixture(scope="module", params=_compilers())
def harness(request, tmp_path_factory):
    """A function sending commands to the host-compiled harness and returning its output lines."""
    directory = tmp_path_factory.mktemp(f"harness-{request.param}")
    source = directory / "harness.cu"
    source.write_text(HARNESS)
    binary = directory / "harness"
    if request.param == "nvcc":
        command = [NVCC, "-O2", f"-I{KERNELS}", "-o", str(binary), str(source)]
    else:
        command = [GXX, "-O2", "-x", "c++", f"-I{KERNELS}", "-o", str(binary), str(source)]
    built = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr

    def run(commands: list[str]) -> list[str]:
        result = subprocess.run([str(binary)], input="\n".join(commands) + "\n",
                                capture_output=True, text=True, timeout=60, check=True)
        return result.stdout.splitlines()

    return run


KNOWN_ANSWERS = [  # Random123's kat_vectors for philox4x32-10: counter, key -> output
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def test_philox_known_answers(harness):
    lines = harness([f"philox {' '.join(f'{w:x}' for w in counter + key)}" for counter, key, _ in KNOWN_ANSWERS])
    for line, (counter, key, expected) in zip(lines, KNOWN_ANSWERS):
        assert [int(w, 16) for w in line.split()] == list(expected)
        assert reference.philox4x32(counter, key).tolist() == list(expected)


SEEDS_AND_OFFSETS = [(0, 0), (1, 1), (0x123456789ABCDEF, 2), (2**64 - 1, 3), (42, 2**32 - 2),
                     (7, 2**62 + 5), (2**64 - 1, 2**64 - 203)]  # the last ends at word 2**64 - 1


def test_words_match_reference(harness):
    n = 203
    lines = harness([f"words {seed:x} {offset:x} {n:x}" for seed, offset in SEEDS_AND_OFFSETS])
    for line, (seed, offset) in zip(lines, SEEDS_AND_OFFSETS):
        words = np.array([int(w, 16) for w in line.split()], dtype=np.uint32)
        np.testing.assert_array_equal(words, reference.random_bits(n, seed=seed, offset=offset))


@pytest.mark.parametrize("p", [0.0, 1e-6, 0.1, 0.5, 0.9, 1.0])
def test_keep_decisions_match_reference(harness, p):
    n = 203
    threshold = keep_threshold(p)
    lines = harness([f"keep {seed:x} {offset:x} {n:x} {threshold:x}" for seed, offset in SEEDS_AND_OFFSETS])
    for line, (seed, offset) in zip(lines, SEEDS_AND_OFFSETS):
        keep = np.array([c == "1" for c in line], dtype=bool)
        np.testing.assert_array_equal(keep, reference.keep_mask((n,), p, seed=seed, offset=offset))


def _interesting_values(dtype, rng, n=600):
    """Random bit patterns over the whole finite range, normals, subnormals, zeros, infinities."""
    unsigned = {2: np.uint16, 4: np.uint32, 8: np.uint64}[dtype.itemsize]
    raw = rng.integers(0, np.iinfo(unsigned).max, size=n, dtype=unsigned, endpoint=True).view(dtype)
    # bfloat16 shares float32's exponent range, hence float32's smallest normal.
    smallest_normal = float(np.finfo(np.float32 if dtype.name == "bfloat16" else dtype).smallest_normal)
    with np.errstate(over="ignore", invalid="ignore"):  # NaN patterns are dropped right here
        candidates = [
            raw[np.isfinite(raw.astype(np.float64))],
            rng.standard_normal(n).astype(dtype),
            (rng.standard_normal(n) * smallest_normal).astype(dtype),
            np.array([0.0, -0.0, np.inf, -np.inf, 1.0, -1.0, 65504.0, 3.0e38]).astype(dtype),
        ]
    return np.concatenate(candidates)


def _scaled(values, p):
    """fastdrop.reference's select with everything kept (keep decisions are tested above)."""
    return reference._apply(values, np.ones(values.shape, dtype=bool), p)


DTYPES = ["f16", "f32", "f64", "bf16"]


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("p", [1e-6, 0.1, 0.5, 0.9])
def test_select_matches_reference(harness, dtype_name, p):
    if dtype_name == "bf16":
        ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes is needed for numpy bfloat16")
        dtype = np.dtype(ml_dtypes.bfloat16)
    else:
        dtype = np.dtype({"f16": np.float16, "f32": np.float32, "f64": np.float64}[dtype_name])
    from fastdrop._contract import compute_dtype, scale_factor

    rng = np.random.default_rng(1234)
    values = _interesting_values(dtype, rng)
    scale = compute_dtype(dtype).type(scale_factor(p))
    scale_bits = int(np.array(scale).view({4: np.uint32, 8: np.uint64}[scale.itemsize]))
    unsigned = {2: np.uint16, 4: np.uint32, 8: np.uint64}[dtype.itemsize]
    raw = values.view(unsigned)
    lines = harness([
        f"select {dtype_name} {scale_bits:x} {keep} {raw.size:x} " + " ".join(f"{int(v):x}" for v in raw)
        for keep in (1, 0)
    ])
    kept = np.array([int(v, 16) for v in lines[0].split()], dtype=unsigned)
    dropped = np.array([int(v, 16) for v in lines[1].split()], dtype=unsigned)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = _scaled(values, p).view(unsigned)
    np.testing.assert_array_equal(kept, expected)
    np.testing.assert_array_equal(dropped, np.zeros_like(dropped))  # +0 even for inf and -x
