"""Memory traces of emulated launches, and the 32-byte sectors a GPU's warps would request.

``with cupy.trace_memory() as trace:`` makes every launch in the block (on this thread) run the
memory-tracing build of its kernels (emulation_runtime.hpp): each access a lane makes to one of
the launch's array arguments is recorded with the lane's count of such accesses so far. On a
GPU the lanes of a warp run in step, so the k-th accesses of its 32 lanes are one instruction's
request; the sectors it touches are what the memory system moves for it. ``Launch.sectors()``
adds them up per argument: a request whose lanes read consecutive words touches as few sectors
as its bytes need (efficiency 1); one whose lanes lie 32 bytes or more apart touches a sector per
lane. Lanes that branch differently make the pairing approximate (a warp's tail, for instance).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

SECTOR = 32
RECORD = np.dtype([("address", "<u8"), ("step", "<u8"), ("block", "<u4"), ("thread", "<u4"),
                   ("size", "<u4"), ("store", "<u4")])

_state = threading.local()


@dataclass
class Traffic:
    """One argument's loads or stores in one launch."""

    requests: int  # warp-level memory instructions
    sectors: int  # 32-byte sectors they touch, summed over requests
    bytes: int  # bytes the lanes asked for

    @property
    def efficiency(self) -> float:
        """Bytes asked for / bytes of the sectors touched (1.0: perfectly coalesced)."""
        return self.bytes / (self.sectors * SECTOR) if self.sectors else 1.0


@dataclass
class Launch:
    name: str
    grid: tuple
    block: tuple
    arguments: dict  # argument index -> (start address, end address) of its allocation's data
    records: np.ndarray = field(repr=False)

    def sectors(self) -> dict[tuple[int, str], Traffic]:
        """{(argument index, "load" or "store"): Traffic} for every argument accessed."""
        records = self.records
        if records.size == 0:
            return {}
        indices = np.array(sorted(self.arguments))
        starts = np.array([self.arguments[i][0] for i in indices], dtype=np.uint64)
        order = np.argsort(starts, kind="stable")
        position = np.searchsorted(starts[order], records["address"], side="right") - 1
        argument = indices[order][position]
        first = records["address"] // SECTOR
        last = (records["address"] + records["size"] - 1) // SECTOR
        warp = records["thread"] // 32
        result = {}
        for index in np.unique(argument):
            for store, kind in ((0, "load"), (1, "store")):
                chosen = (argument == index) & (records["store"] == store)
                if not chosen.any():
                    continue
                request = np.stack([records["block"][chosen].astype(np.uint64), warp[chosen].astype(np.uint64),
                                    records["step"][chosen]], axis=1)
                sectors = [np.column_stack([request, first[chosen]])]
                spill = last[chosen] != first[chosen]  # an access across a sector boundary
                if spill.any():
                    sectors.append(np.column_stack([request[spill], last[chosen][spill]]))
                result[(int(index), kind)] = Traffic(
                    requests=len(np.unique(request, axis=0)),
                    sectors=len(np.unique(np.concatenate(sectors), axis=0)),
                    bytes=int(records["size"][chosen].sum()),
                )
        return result


class Trace:
    """The launches made inside ``with cupy.trace_memory():`` on this thread."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.launches: list[Launch] = []

    def __enter__(self):
        if getattr(_state, "trace", None) is not None:
            raise RuntimeError("memory traces do not nest")
        _state.trace = self
        return self

    def __exit__(self, *exc):
        _state.trace = None
        return False


def active() -> Trace | None:
    return getattr(_state, "trace", None)
