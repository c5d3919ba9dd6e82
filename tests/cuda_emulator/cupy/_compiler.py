"""Builds a kernel source into a shared library that runs its kernels on the CPU.

The source (what fastdrop hands to ``cupy.RawModule``) is compiled by g++ after
``emulation.hpp``; a table of its ``extern "C"`` kernels, each with the kinds and sizes of its
parameters taken from the C++ signature itself, is appended so that a launch can be checked
argument by argument. Libraries are cached on disk by a hash of everything that goes into them.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

FOLDER = Path(__file__).resolve().parent.parent
HEADER = FOLDER / "emulation.hpp"  # before the kernel source: includes nothing
RUNTIME = FOLDER / "emulation_runtime.hpp"  # after it
_KERNEL = re.compile(r'extern\s+"C"\s+void\s+(\w+)\s*\(')
# -fsanitize=alignment: a misaligned access reports (emulation_runtime.hpp) where a GPU faults.
# Hidden symbols keep every built library's state its own; no CET: lanes start with a bare ret.
# Compiled, then linked without any sanitizer runtime: emulation_runtime.hpp defines the few
# functions the instrumentation calls.
_FLAGS = ["-std=c++17", "-O2", "-fPIC", "-w", "-fno-strict-aliasing", "-fvisibility=hidden",
          "-fcf-protection=none", "-fsanitize=alignment", "-fno-sanitize-recover=alignment"]
# Memory tracing (cupy.trace_memory): a call on every access, no shadow memory, no libasan.
_TRACE_FLAGS = ["-O0", "-DFASTDROP_EMULATION_TRACE", "-fsanitize=address", "-fsanitize-recover=address",
                "--param", "asan-instrumentation-with-call-threshold=0", "--param", "asan-stack=0",
                "--param", "asan-globals=0", "--param", "asan-use-after-return=0"]

_lock = threading.Lock()
_libraries: dict[str, "Library"] = {}


class CompileError(RuntimeError):
    """The kernel source did not compile for the emulator."""


def _compiler() -> str:
    compiler = os.environ.get("CXX") or shutil.which("g++")
    if compiler is None:
        raise CompileError("the CUDA emulator needs g++ (or $CXX) to build kernels")
    return compiler


def _cache_dir() -> Path:
    folder = os.environ.get("FASTDROP_EMULATOR_CACHE")
    if folder is None:
        folder = Path(tempfile.gettempdir()) / f"fastdrop-cuda-emulator-{os.getuid()}"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _run(command: list[str], source: str) -> str:
    result = subprocess.run(command, input=source, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise CompileError(f"{' '.join(command[:2])} ... failed:\n{result.stderr[-6000:]}")
    return result.stdout


def _footer(names: list[str]) -> str:
    entries = ",\n".join(f'    fastdrop_emulation::entry("{name}", &{name})' for name in names)
    return f"""
static const fastdrop_emulation::Entry fastdrop_emulation_entries[] = {{
{entries}
}};

FASTDROP_EMULATION_EXPORT int fastdrop_emulation_count() {{ return {len(names)}; }}
FASTDROP_EMULATION_EXPORT const char* fastdrop_emulation_name(int i) {{ return fastdrop_emulation_entries[i].name; }}
FASTDROP_EMULATION_EXPORT const char* fastdrop_emulation_kinds(int i) {{ return fastdrop_emulation_entries[i].kinds; }}
FASTDROP_EMULATION_EXPORT const unsigned* fastdrop_emulation_sizes(int i) {{ return fastdrop_emulation_entries[i].sizes; }}
FASTDROP_EMULATION_EXPORT int fastdrop_emulation_launch(
        int i, const unsigned* grid, const unsigned* block, void** params, unsigned long long order_seed,
        char* error, int error_size, const unsigned long long* ranges, int range_count, void* records,
        unsigned long long capacity, unsigned long long* recorded) {{
    return fastdrop_emulation::launch(fastdrop_emulation_entries[i], grid, block, params, order_seed, error,
                                      error_size, ranges, range_count, records, capacity, recorded);
}}
FASTDROP_EMULATION_EXPORT int fastdrop_emulation_traced() {{
#if defined(FASTDROP_EMULATION_TRACE)
    return 1;
#else
    return 0;
#endif
}}
"""


class Kernel:
    """One kernel of a built library: its index, name and parameter kinds and sizes."""

    def __init__(self, library: "Library", index: int):
        self.library = library
        self.index = index
        handle = library.handle
        self.name = handle.fastdrop_emulation_name(index).decode()
        self.kinds = handle.fastdrop_emulation_kinds(index).decode()
        sizes = handle.fastdrop_emulation_sizes(index)
        self.sizes = tuple(sizes[i] for i in range(len(self.kinds)))

    def launch(self, grid: tuple[int, int, int], block: tuple[int, int, int], params, trace=None) -> int:
        """Run the kernel; with ``trace`` = (ranges uint64 array, record array) in a tracing build,
        record its accesses to those ranges and return how many (else 0)."""
        handle = self.library.handle
        with _lock:
            self.library.launches += 1
            order_seed = self.library.launches  # blocks run in a different order each launch
        error = ctypes.create_string_buffer(512)
        recorded = ctypes.c_ulonglong(0)
        ranges, records = trace if trace is not None else (None, None)
        rc = handle.fastdrop_emulation_launch(
            self.index, (ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), params, order_seed,
            error, len(error), None if ranges is None else ranges.ctypes.data,
            0 if ranges is None else len(ranges) // 2, None if records is None else records.ctypes.data,
            0 if records is None else len(records), ctypes.byref(recorded),
        )
        if rc != 0:
            raise RuntimeError(f"emulated launch of {self.name}: {error.value.decode(errors='replace')}")
        return recorded.value


class Library:
    def __init__(self, path: Path):
        self.path = path
        handle = ctypes.CDLL(str(path))
        handle.fastdrop_emulation_name.restype = ctypes.c_char_p
        handle.fastdrop_emulation_kinds.restype = ctypes.c_char_p
        handle.fastdrop_emulation_sizes.restype = ctypes.POINTER(ctypes.c_uint)
        handle.fastdrop_emulation_launch.argtypes = [
            ctypes.c_int, ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint),
            ctypes.POINTER(ctypes.c_void_p), ctypes.c_ulonglong, ctypes.c_char_p, ctypes.c_int,
            ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_ulonglong,
            ctypes.POINTER(ctypes.c_ulonglong),
        ]
        self.handle = handle
        self.launches = 0
        self.traced = bool(handle.fastdrop_emulation_traced())
        count = handle.fastdrop_emulation_count()
        self.kernels = {kernel.name: kernel for kernel in (Kernel(self, i) for i in range(count))}


def build(code: str, trace: bool = False) -> Library:
    """The library for ``code`` (``trace``: the memory-tracing build): from this process, from
    the disk cache, or compiled now."""
    compiler = _compiler()
    flags = _FLAGS + (_TRACE_FLAGS if trace else [])
    header, runtime = HEADER.read_text(), RUNTIME.read_text()
    key = hashlib.sha256("\0".join([compiler, " ".join(flags), header, runtime, code]).encode()).hexdigest()[:32]
    with _lock:
        library = _libraries.get(key)
        if library is not None:
            return library
        path = _cache_dir() / f"kernels-{key}.so"
        if not path.exists():
            source = f'#include "{HEADER.name}"\n{code}\n#include "{RUNTIME.name}"\n'
            include = f"-I{FOLDER}"
            expanded = _run([compiler, "-E", "-P", "-x", "c++", "-std=c++17", include, "-"], f'#include "{HEADER.name}"\n{code}')
            names = [n for n in dict.fromkeys(_KERNEL.findall(expanded)) if not n.startswith("fastdrop_emulation")]
            if not names:
                raise CompileError("the source defines no extern \"C\" kernel")
            partial = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}")
            _run([compiler, *flags, include, "-c", "-x", "c++", "-", "-o", f"{partial}.o"], source + _footer(names))
            _run([compiler, "-shared", f"{partial}.o", "-o", str(partial)], "")
            os.unlink(f"{partial}.o")
            os.replace(partial, path)  # atomic: other processes see the whole library or none
        library = Library(path)
        _libraries[key] = library
        return library
