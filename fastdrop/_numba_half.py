"""IEEE half precision for Numba CPU kernels, which have no float16 type.

Kernels see float16 arrays as uint16 (``x.view(np.uint16)``): ``half_to_float`` widens a half's bits
to float32 exactly, the kernel computes in float32 as the contract asks (float16 computes in float32
and rounds once), and ``float_to_half`` rounds back to nearest-even exactly as NumPy's
``astype(np.float16)`` does, NaN payloads and signed zeros included. Each comes in two versions:
the CPU's conversion instructions (``*_native``: LLVM's fpext/fptrunc, F16C on x86-64, used where
present) and bit-field arithmetic (``*_bits``, used elsewhere); both vectorise, and both are
checked against NumPy over every half and a dense sample of float32 bit patterns in
``tests/test_half.py`` (the native ones quiet signalling NaNs, which no kernel result is).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic, overload

from fastdrop._numba_bits import bits_float32, float32_bits

_jit = dict(nogil=True, cache=True, error_model="numpy", boundscheck=False)

_SUBNORMAL_UNIT = np.float32(2.0**-24)  # the value of a half's last mantissa bit below 2**-14


@numba.njit(inline="always", **_jit)
def half_to_float_bits(half):
    """float32 value of the half with bits ``half`` (uint16); exact. Needs no half-precision
    instructions: bit fields, and a float32 multiply for subnormals."""
    h = np.uint32(half)
    sign = (h & np.uint32(0x8000)) << np.uint32(16)
    exponent = (h >> np.uint32(10)) & np.uint32(0x1F)
    mantissa = h & np.uint32(0x3FF)
    # Normal: rebias 15 -> 127. Inf/NaN: all-ones exponent, payload kept. Subnormal/zero: exact
    # as mantissa * 2**-24 in float32.
    normal = sign | ((exponent + np.uint32(112)) << np.uint32(23)) | (mantissa << np.uint32(13))
    special = sign | np.uint32(0x7F800000) | (mantissa << np.uint32(13))
    small = sign | float32_bits(np.float32(mantissa) * _SUBNORMAL_UNIT)
    bits = special if exponent == np.uint32(0x1F) else (normal if exponent != np.uint32(0) else small)
    return bits_float32(bits)


@numba.njit(inline="always", **_jit)
def float_to_half_bits(value):
    """Bits (uint16) of float32 ``value`` rounded to the nearest half, ties to even, as NumPy.
    Needs no half-precision instructions: bit fields, and ``rint`` for subnormal halves."""
    f = float32_bits(value)
    sign = (f >> np.uint32(16)) & np.uint32(0x8000)
    magnitude = f & np.uint32(0x7FFFFFFF)
    # Normal halves: drop 13 mantissa bits with round-to-nearest-even (a carry may bump the
    # exponent, correctly), then rebias 127 -> 15.
    lsb = (magnitude >> np.uint32(13)) & np.uint32(1)
    normal = (magnitude + np.uint32(0xFFF) + lsb - np.uint32(0x38000000)) >> np.uint32(13)
    # Subnormal halves (and zero): the value in units of 2**-24, rounded to even by rint; 1024
    # (rounding up to 2**-14) is the smallest normal's encoding, as it should be.
    small = np.uint32(np.rint(bits_float32(magnitude) * np.float32(16777216.0)))
    # NaN keeps the top of its payload and stays a NaN; overflow (>= 65520) becomes infinity.
    nan = np.uint32(0x7C00) | ((magnitude & np.uint32(0x7FFFFF)) >> np.uint32(13))
    nan = nan if nan != np.uint32(0x7C00) else np.uint32(0x7C01)
    if magnitude > np.uint32(0x7F800000):
        h = nan
    elif magnitude >= np.uint32(0x477FF000):
        h = np.uint32(0x7C00)
    elif magnitude >= np.uint32(0x38800000):
        h = normal
    else:
        h = small
    return np.uint16(sign | h)


@intrinsic
def half_to_float_native(typingctx, half):
    """LLVM's ``fpext half -> float`` on the bits ``half``: exact; one F16C instruction
    (vcvtph2ps, vectorised) on x86. NaNs come out quiet, payload kept."""
    if half != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


@intrinsic
def float_to_half_native(typingctx, value):
    """LLVM's ``fptrunc float -> half`` (round to nearest even) as uint16 bits: vcvtps2ph with
    F16C. Equal to ``float_to_half_bits`` except for signalling NaNs, which come out quiet; the
    kernels only narrow results of float32 arithmetic, which are never signalling."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(types.float32), codegen


def _host_converts_halves() -> bool:
    """Whether LLVM lowers half <-> float conversions to instructions here: F16C on x86-64,
    always on AArch64. Elsewhere it would call compiler-rt helpers Numba does not link."""
    import platform

    machine = platform.machine().lower()
    if machine in ("arm64", "aarch64"):
        return True
    if machine in ("x86_64", "amd64"):
        from numba.core import config

        if config.CPU_NAME and config.CPU_NAME != "host":
            # Compiling for a named CPU (NUMBA_CPU_NAME, e.g. "generic" for portable caches):
            # only its declared features count.
            return "+f16c" in (config.CPU_FEATURES or "")
        from llvmlite import binding

        try:
            return bool(binding.get_host_cpu_features().get("f16c"))
        except Exception:  # no feature query on this llvmlite/platform: be safe
            return False
    return False


#: The conversions the kernels use: the hardware's where it has them (about 3x faster per
#: element for float16 dropout on this AVX2 machine), else the integer versions.
NATIVE_HALF = _host_converts_halves()
half_to_float = half_to_float_native if NATIVE_HALF else half_to_float_bits
float_to_half = float_to_half_native if NATIVE_HALF else float_to_half_bits


def load(array, index):
    """``array[index]`` in its compute type: a half (a uint16 array) widened to float32."""
    raise NotImplementedError("load is for Numba-compiled code")


def store(array, index, value):
    """``array[index] = value``, rounding a float32 to half for a uint16 (half) array."""
    raise NotImplementedError("store is for Numba-compiled code")


@overload(load)
def _load(array, index):
    if not isinstance(array, types.Array):
        return None
    if array.dtype == types.uint16:
        return lambda array, index: half_to_float(array[index])
    return lambda array, index: array[index]


@overload(store)
def _store(array, index, value):
    if not isinstance(array, types.Array):
        return None
    if array.dtype == types.uint16:

        def store_half(array, index, value):
            array[index] = float_to_half(np.float32(value))

        return store_half

    def store_value(array, index, value):
        array[index] = value

    return store_value


def as_compute(array, value):
    """``value`` in the compute type of ``array``'s elements: float32 for a half (uint16) array,
    else the array's own dtype."""
    raise NotImplementedError("as_compute is for Numba-compiled code")


@overload(as_compute)
def _as_compute(array, value):
    if not isinstance(array, types.Array):
        return None
    if array.dtype == types.uint16:
        return lambda array, value: np.float32(value)
    kind = array.dtype
    return lambda array, value: kind(value)


def kernel_view(array):
    """What a kernel sees of a NumPy array: float16 as its uint16 bits, anything else as is."""
    return array.view(np.uint16) if array.dtype == np.float16 else array
