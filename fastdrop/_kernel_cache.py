"""A Numba cache folder for a source checkout, named after the sources the kernels compile from.

Numba judges a cached kernel stale by its own file's size and time only, but fastdrop's kernels
inline helpers and constants from other files (``_numba_kernels``, ``_numba_half``,
``_numba_prefetch``, ``_contract``, ``reference``): after an edit or a ``git pull`` that touches only
one of those, the others' cached machine code would still run. An installed package does not
have the problem (an upgrade rewrites every file). The tests (``tests/conftest.py``) and
``dev.sh`` point ``NUMBA_CACHE_DIR`` here unless it is set; the library itself never does.

    python -m fastdrop._kernel_cache     # prints the folder
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def kernel_sources() -> list[Path]:
    return sorted([*PACKAGE.glob("_numba*.py"), PACKAGE / "_contract.py", PACKAGE / "reference.py"])


def checkout_cache_dir() -> Path:
    """``<checkout>/.numba_cache/<hash of the kernel sources>``."""
    digest = hashlib.sha256()
    for path in kernel_sources():
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return PACKAGE.parent / ".numba_cache" / digest.hexdigest()[:16]


if __name__ == "__main__":
    print(checkout_cache_dir())
