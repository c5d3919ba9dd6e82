"""Keep Numba's block labels short in a process that compiles many kernels.

Numba numbers the basic blocks of a function's IR with a process-wide counter
(``numba.core.ir_utils._the_max_label``) that only grows. Inlining an ``inline="always"`` helper
relabels the helper's blocks twice, each time by an offset of about the counter's value, so every
such inline roughly doubles the counter (numba 0.68.1). Our kernels inline dozens of helpers
each: a process that compiles all of them (the test suite from an empty cache, as CI runs it)
reached block labels of over a thousand digits, and LLVM rejected the IR ("unable to create block
named 'B2281093911...'", "name is too long"). Measured from an empty cache: the counter had 4
digits after the first kernel, 24 after five.

Labels only need to be unique within the function being compiled, and every pass that creates
blocks first raises the counter past the labels already in that function (as it must in a fresh
process, where the counter starts at 0). So :func:`install` resets the counter to 0 when an
outermost compilation starts (Numba's ``numba:compile`` event, which fires under its global
compiler lock; nested compilations of callees leave it alone).
"""

from __future__ import annotations

from numba.core import event, ir_utils

_installed = False


class _ResetAtOutermostCompile(event.Listener):
    def __init__(self):
        self.depth = 0  # compilations in progress (all under Numba's compiler lock)

    def on_start(self, event_):
        if self.depth == 0:
            counter = getattr(ir_utils, "_the_max_label", None)
            if counter is not None and hasattr(counter, "_value"):
                counter._value = 0
        self.depth += 1

    def on_end(self, event_):
        self.depth -= 1


def install() -> None:
    """Register the reset once per process (idempotent)."""
    global _installed
    if not _installed:
        event.register("numba:compile", _ResetAtOutermostCompile())
        _installed = True
