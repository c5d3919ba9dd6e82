"""``cupy.cuda`` of the emulator: one device, streams and events that only keep order.

Launches run synchronously on the CPU, so synchronising does nothing; graph capture is refused.
The device's multiprocessor count (what fastdrop's grid cap is made from) is
``$FASTDROP_EMULATOR_SMS`` (default 2), small so that grid-stride loops go round many times.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import types

_state = threading.local()


def _sm_count() -> int:
    return int(os.environ.get("FASTDROP_EMULATOR_SMS", "2"))


class CUDARuntimeError(RuntimeError):
    pass


class runtime:  # noqa: N801 (CuPy's module name)
    CUDARuntimeError = CUDARuntimeError

    @staticmethod
    def getDeviceCount():  # noqa: N802
        return 1

    @staticmethod
    def getDevice():  # noqa: N802
        return 0

    @staticmethod
    def runtimeGetVersion():  # noqa: N802
        return 0

    @staticmethod
    def driverGetVersion():  # noqa: N802
        return 0

    @staticmethod
    def getDeviceProperties(device):  # noqa: N802
        return {"name": b"fastdrop CUDA emulator (CPU)", "multiProcessorCount": _sm_count(),
                "totalGlobalMem": 0, "major": 0, "minor": 0}


class Device:
    def __init__(self, device=None):
        device = 0 if device is None else int(device)
        if device != 0:
            raise CUDARuntimeError(f"cudaErrorInvalidDevice: the emulator has device 0 only, not {device}")
        self.id = device

    @property
    def attributes(self):
        return {"MultiProcessorCount": _sm_count()}

    def synchronize(self):
        pass

    def use(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class Stream:
    null = None

    def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
        self.ptr = 0 if null else id(self)

    def synchronize(self):
        pass

    def use(self):
        _state.current = self
        return self

    def begin_capture(self, mode=None):
        raise NotImplementedError("CUDA graph capture is not emulated")

    def __enter__(self):
        stack = getattr(_state, "stack", None)
        if stack is None:
            stack = _state.stack = []
        stack.append(get_current_stream())
        _state.current = self
        return self

    def __exit__(self, *exc):
        _state.current = _state.stack.pop()
        return False


class ExternalStream(Stream):
    def __init__(self, ptr, device_id=-1):
        super().__init__()
        self.ptr = ptr


Stream.null = Stream(null=True)


def get_current_stream(device_id=-1):
    return getattr(_state, "current", None) or Stream.null


class Event:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.time = None

    def record(self, stream=None):
        self.time = time.perf_counter()

    @property
    def done(self):
        return True

    def synchronize(self):
        pass


def get_elapsed_time(start, end):
    return (end.time - start.time) * 1e3


def get_cuda_path():
    return None


# --- memory hooks (CuPy's pool hooks: malloc / free, called by the emulator's allocations) -----

class MemoryHook:
    """Base of pool hooks, registered for the current thread by ``with hook:``."""

    name = "MemoryHook"

    def __enter__(self):
        hooks = getattr(_state, "memory_hooks", None)
        if hooks is None:
            hooks = _state.memory_hooks = {}
        if self.name in hooks:
            raise KeyError(f"hook {self.name} already exists")
        hooks[self.name] = self
        return self

    def __exit__(self, *exc):
        del _state.memory_hooks[self.name]
        return False

    def malloc_preprocess(self, **kwargs):
        pass

    def malloc_postprocess(self, **kwargs):
        pass

    def free_preprocess(self, **kwargs):
        pass

    def free_postprocess(self, **kwargs):
        pass


def _run_hooks(point: str, **kwargs) -> None:
    for hook in list(getattr(_state, "memory_hooks", {}).values()):
        getattr(hook, point)(**kwargs)


memory_hook = types.ModuleType(f"{__name__}.memory_hook")
memory_hook.MemoryHook = MemoryHook
sys.modules[memory_hook.__name__] = memory_hook
