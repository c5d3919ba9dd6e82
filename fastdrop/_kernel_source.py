"""The CUDA kernel sources as NVRTC gets them: one string, local includes inlined.

Kept apart from ``_cupy_backend`` (which imports CuPy) so that the compile checks of
tests/test_cuda_host.py and tests/test_variants.py, and the CPU emulator, can assemble the
sources where CuPy is not installed.
"""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def _kernel_directory():
    """The kernels folder: package data when installed, the checkout's kernels/ otherwise."""
    try:
        return importlib.resources.files("fastdrop.kernels")
    except ModuleNotFoundError:  # running from a checkout without installing (bench/gpu_check.py)
        return Path(__file__).resolve().parent.parent / "kernels"


def assemble_source(directory=None, name: str = "dropout.cu", _seen=None) -> str:
    """The kernel source with local ``#include "..."`` files inlined.

    NVRTC gets one string; ``#line`` directives carry the real file names and line numbers, so
    compiler errors point at kernels/*.cu(h) rather than at a temporary file.
    """
    directory = _kernel_directory() if directory is None else directory
    seen = set() if _seen is None else _seen
    resource = directory / name
    path = str(resource).replace("\\", "/")
    lines = [f'#line 1 "{path}"']
    for number, line in enumerate(resource.read_text(encoding="utf-8").splitlines(), start=1):
        match = _INCLUDE.match(line)
        if match is None:
            # Inlined headers are no longer separate files: their guard would only warn.
            lines.append("" if line.strip() == "#pragma once" else line)
            continue
        if match[1] not in seen:
            seen.add(match[1])
            lines.append(assemble_source(directory, match[1], seen))
        lines.append(f'#line {number + 1} "{path}"')
    return "\n".join(lines) + "\n"
