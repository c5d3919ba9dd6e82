// The contract's select, y = keep ? x * s : 0, for each storage dtype, on raw bits.
//
// Working on raw bits keeps the kernels free of cuda_fp16.h / cuda_bf16.h (NVRTC then needs no
// include path) and lets the host harness run exactly this code. Rounding rules (contract):
// float16 and bfloat16 compute in float32 and round once to nearest even; float32 and float64
// compute in their own type. CuPy compiles with -ftz=true, which would flush float32 subnormals,
// so the device multiply and conversions are written as PTX without the .ftz modifier.
#pragma once

#include "philox.cuh"

namespace fastdrop {

typedef unsigned short u16;

FASTDROP_HD float float_from_bits(u32 bits) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(bits);
#else
    float value;
    __builtin_memcpy(&value, &bits, sizeof value);
    return value;
#endif
}

FASTDROP_HD u32 bits_from_float(float value) {
#if defined(__CUDA_ARCH__)
    return __float_as_uint(value);
#else
    u32 bits;
    __builtin_memcpy(&bits, &value, sizeof bits);
    return bits;
#endif
}

FASTDROP_HD double double_from_bits(u64 bits) {
#if defined(__CUDA_ARCH__)
    return __longlong_as_double((long long)bits);
#else
    double value;
    __builtin_memcpy(&value, &bits, sizeof value);
    return value;
#endif
}

FASTDROP_HD u64 bits_from_double(double value) {
#if defined(__CUDA_ARCH__)
    return (u64)__double_as_longlong(value);
#else
    u64 bits;
    __builtin_memcpy(&bits, &value, sizeof bits);
    return bits;
#endif
}

// IEEE float32 product, subnormals kept whatever -ftz says.
FASTDROP_HD float multiply_f32(float a, float b) {
#if defined(__CUDA_ARCH__)
    float product;
    asm("mul.rn.f32 %0, %1, %2;" : "=f"(product) : "f"(a), "f"(b));
    return product;
#else
    return a * b;
#endif
}

// Round-to-nearest-even on the low `shift` bits of `value` (1 <= shift <= 31).
FASTDROP_HD u32 shift_round_even(u32 value, u32 shift) {
    const u32 kept = value >> shift;
    const u32 rest = value & ((1u << shift) - 1u);
    const u32 half = 1u << (shift - 1u);
    return kept + ((rest > half || (rest == half && (kept & 1u))) ? 1u : 0u);
}

FASTDROP_HD float f16_to_f32(u16 h) {
#if defined(__CUDA_ARCH__)
    float value;
    asm("cvt.f32.f16 %0, %1;" : "=f"(value) : "h"(h));
    return value;
#else
    const u32 sign = (u32)(h & 0x8000u) << 16;
    const u32 exponent = (h >> 10) & 0x1Fu;
    const u32 mantissa = h & 0x3FFu;
    if (exponent == 0x1Fu) return float_from_bits(sign | 0x7F800000u | (mantissa << 13));
    if (exponent == 0u) {  // zero or subnormal: mantissa * 2**-24, exact in float32
        const float magnitude = (float)mantissa * 5.9604644775390625e-8f;
        return float_from_bits(sign | bits_from_float(magnitude));
    }
    return float_from_bits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
#endif
}

FASTDROP_HD u16 f32_to_f16(float value) {
#if defined(__CUDA_ARCH__)
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(value));
    return h;
#else
    const u32 bits = bits_from_float(value);
    const u32 sign = (bits >> 16) & 0x8000u;
    const u32 magnitude = bits & 0x7FFFFFFFu;
    if (magnitude > 0x7F800000u) return (u16)(sign | 0x7E00u | ((magnitude >> 13) & 0x3FFu));
    if (magnitude >= 0x477FF000u) return (u16)(sign | 0x7C00u);  // 65520 and up round to inf
    if (magnitude >= 0x38800000u) {  // normal half: rebias the exponent, round 13 bits away
        return (u16)(sign | shift_round_even(magnitude - 0x38000000u, 13u));
    }
    const u32 exponent = magnitude >> 23;  // below 2**-14: a half subnormal (or zero)
    const u32 shift = 126u - exponent;     // value = significand * 2**-shift in half ulps
    if (exponent == 0u || shift > 24u) return (u16)sign;
    const u32 significand = (magnitude & 0x7FFFFFu) | 0x800000u;
    return (u16)(sign | shift_round_even(significand, shift));
#endif
}

FASTDROP_HD float bf16_to_f32(u16 b) {
    return float_from_bits((u32)b << 16);
}

// Integer round-to-nearest-even on both sides, so host and device share this exact code.
FASTDROP_HD u16 f32_to_bf16(float value) {
    const u32 bits = bits_from_float(value);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return (u16)((bits >> 16) | 0x40u);  // quiet NaN
    return (u16)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

// One traits struct per storage dtype: the raw word, the type the scale is passed in, the select.
struct Float16 {
    typedef u16 raw;
    typedef float scale_type;
    static FASTDROP_HD raw select(raw x, bool keep, float scale) {
        return keep ? f32_to_f16(multiply_f32(f16_to_f32(x), scale)) : (raw)0;
    }
};

struct BFloat16 {
    typedef u16 raw;
    typedef float scale_type;
    static FASTDROP_HD raw select(raw x, bool keep, float scale) {
        return keep ? f32_to_bf16(multiply_f32(bf16_to_f32(x), scale)) : (raw)0;
    }
};

struct Float32 {
    typedef u32 raw;
    typedef float scale_type;
    static FASTDROP_HD raw select(raw x, bool keep, float scale) {
        return keep ? bits_from_float(multiply_f32(float_from_bits(x), scale)) : 0u;
    }
};

struct Float64 {
    typedef u64 raw;
    typedef double scale_type;
    static FASTDROP_HD raw select(raw x, bool keep, double scale) {
        return keep ? bits_from_double(double_from_bits(x) * scale) : 0ull;
    }
};

}  // namespace fastdrop
