"""Keep Numba's on-disk kernel cache in step with every source the kernels compile from.

Numba judges a cached kernel stale by its own file's size and time only, but fastdrop's kernels
inline helpers and constants from other files (``_numba_kernels``, ``_numba_half``,
``_numba_prefetch``, ``_contract``, ``reference``). After an edit or a ``git pull`` that touches one
of those, the others' cached machine code would still run: old code, and tests passing on it.
So the kernel modules call :func:`discard_stale_kernels` before they define a kernel: it keeps a
hash of those sources beside the cache (``fastdrop/__pycache__``, Numba's default place) and
deletes the package's cached kernels when the hash changes. An installed package pays one hash of
about 100 kB per process; its hash never changes. A cache elsewhere (``NUMBA_CACHE_DIR``) is the
user's to manage.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
_STAMP = "fastdrop-kernel-sources.sha256"
_checked = False


def kernel_sources() -> list[Path]:
    return sorted([*PACKAGE.glob("_numba*.py"), PACKAGE / "_contract.py", PACKAGE / "reference.py"])


def sources_digest() -> str:
    digest = hashlib.sha256()
    for path in kernel_sources():
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def discard_stale_kernels() -> None:
    """Delete ``fastdrop/__pycache__/_numba*.nbi|nbc`` if the kernel sources changed since they
    were written (once per process; errors, e.g. a read-only install, are ignored)."""
    global _checked
    if _checked or os.environ.get("NUMBA_CACHE_DIR"):
        return
    _checked = True
    cache = PACKAGE / "__pycache__"
    stamp = cache / _STAMP
    try:
        digest = sources_digest()
        if stamp.is_file() and stamp.read_text().strip() == digest:
            return
        cache.mkdir(exist_ok=True)
        for path in [*cache.glob("_numba*.nbi"), *cache.glob("_numba*.nbc")]:
            path.unlink(missing_ok=True)
        partial = cache / f"{_STAMP}.{os.getpid()}"
        partial.write_text(digest + "\n")
        os.replace(partial, stamp)  # never a half-written stamp for another process to read
    except OSError:
        pass
