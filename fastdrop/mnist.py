"""MNIST in its standard IDX files (gzip): find, verify, download and parse them.

Files are looked for, all four in one folder, in this order: the ``data_dir`` argument
(``--data-dir``), ``$FASTDROP_DATA``, the cache folder (``$XDG_CACHE_HOME/fastdrop/mnist``, by default
``~/.cache/fastdrop/mnist``) and a ``shared/data/mnist`` folder beside a source checkout (where the
project's machines keep the canonical copy). When none has them, they are downloaded into the cache
folder with pooch. Checksums are of the *uncompressed* bytes: gzip wrappers differ between mirrors
(compression level, mtime), the IDX payload does not.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["FILES", "MIRRORS", "Mnist", "MnistUnavailableError", "ChecksumError", "load", "locate"]

#: role -> (file name, SHA-256 of the uncompressed IDX bytes).
FILES = {
    "train_images": (
        "train-images-idx3-ubyte.gz",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    "train_labels": (
        "train-labels-idx1-ubyte.gz",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    "test_images": (
        "t10k-images-idx3-ubyte.gz",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    "test_labels": (
        "t10k-labels-idx1-ubyte.gz",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
}

#: Public copies of the original files, tried in order (the original yann.lecun.com site refuses
#: most automated downloads).
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

# IDX magic numbers: two zero bytes, the element type (0x08 = unsigned byte), the number of dims.
_IDX_UBYTE = 0x08


class MnistUnavailableError(FileNotFoundError):
    """The MNIST files are in none of the places looked at and could not be downloaded."""


class ChecksumError(ValueError):
    """A file's uncompressed bytes do not have the published checksum (corrupt or not MNIST)."""


@dataclass(frozen=True)
class Mnist:
    """The four arrays as stored: images uint8 (N, 28, 28), labels uint8 (N,)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def cache_dir() -> Path:
    """Where downloads go; follows the XDG convention so that it can be redirected."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastdrop" / "mnist"


def _checkout_data_dir() -> Path:
    # fastdrop/mnist.py -> <checkout>/fastdrop -> <checkout> -> its parent, which holds shared/.
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def candidate_dirs(data_dir=None) -> list[tuple[str, Path]]:
    """The folders looked at, in order, each with a label saying where it came from."""
    candidates = []
    if data_dir is not None:
        candidates.append(("--data-dir", Path(data_dir)))
    if os.environ.get("FASTDROP_DATA"):
        candidates.append(("$FASTDROP_DATA", Path(os.environ["FASTDROP_DATA"])))
    candidates.append(("cache", cache_dir()))
    candidates.append(("checkout's shared data", _checkout_data_dir()))
    return candidates


def _has_all_files(folder: Path) -> bool:
    return all((folder / name).is_file() for name, _ in FILES.values())


def _download(folder: Path) -> None:
    """Fetch the four files into ``folder``; raises on any failure (network, pooch missing)."""
    import pooch  # optional (fastdrop[downloads]); only needed when the files are absent

    folder.mkdir(parents=True, exist_ok=True)
    for name, sha256 in FILES.values():
        if (folder / name).is_file():
            continue
        errors = []
        for mirror in MIRRORS:
            try:
                # known_hash=None: the mirrors' gzip bytes are not ours to pin; the payload is
                # verified below instead.
                path = Path(pooch.retrieve(mirror + name, known_hash=None, fname=name, path=folder))
                _verified_bytes(path, sha256)
                break
            except Exception as error:  # noqa: BLE001 - try the next mirror, report all at the end
                (folder / name).unlink(missing_ok=True)
                errors.append(f"{mirror}{name}: {error}")
        else:
            raise OSError("could not download " + name + ":\n  " + "\n  ".join(errors))


def _unavailable_message(candidates, reason: str) -> str:
    looked = "\n".join(f"  {label:<24} {folder}" for label, folder in candidates)
    names = "\n".join(f"  {name}" for name, _ in FILES.values())
    return (
        f"MNIST files not found, and downloading them failed ({reason}).\n"
        f"Looked in (each needs all four files):\n{looked}\n"
        f"Put these gzip IDX files into one of those folders (or pass --data-dir / set "
        f"FASTDROP_DATA):\n{names}"
    )


def locate(data_dir=None, *, download: bool = True) -> Path:
    """The first folder holding all four files, downloading into the cache folder if none does."""
    candidates = candidate_dirs(data_dir)
    for _, folder in candidates:
        if _has_all_files(folder):
            return folder
    if not download:
        raise MnistUnavailableError(_unavailable_message(candidates, "downloads disabled"))
    target = cache_dir()
    try:
        _download(target)
    except Exception as error:  # noqa: BLE001 - offline, pooch missing, mirror gone: one message
        raise MnistUnavailableError(_unavailable_message(candidates, str(error))) from error
    return target


def _verified_bytes(path: Path, sha256: str) -> bytes:
    with gzip.open(path, "rb") as stream:
        payload = stream.read()
    digest = hashlib.sha256(payload).hexdigest()
    if digest != sha256:
        raise ChecksumError(
            f"{path}: SHA-256 of the uncompressed bytes is {digest}, expected {sha256}; "
            f"the file is corrupt or not the MNIST file of that name (delete it and retry)"
        )
    return payload


def parse_idx(payload: bytes) -> np.ndarray:
    """An IDX file's array of unsigned bytes (the only element type MNIST uses)."""
    if len(payload) < 4 or payload[0] != 0 or payload[1] != 0 or payload[2] != _IDX_UBYTE:
        raise ValueError("not an IDX file of unsigned bytes (bad magic number)")
    ndim = payload[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(payload, dtype=">u4", count=ndim, offset=4))
    if len(payload) - header != int(np.prod(shape)):
        raise ValueError(f"IDX header says shape {shape} but the file holds {len(payload) - header} bytes")
    return np.frombuffer(payload, dtype=np.uint8, offset=header).reshape(shape)


def load(data_dir=None, *, download: bool = True) -> Mnist:
    """All four MNIST arrays, checksum-verified; see the module docstring for where they come from."""
    folder = locate(data_dir, download=download)
    arrays = {
        role: parse_idx(_verified_bytes(folder / name, sha256)) for role, (name, sha256) in FILES.items()
    }
    return Mnist(**arrays)
