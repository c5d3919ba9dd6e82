// fastdrop's CUDA kernels of the dropout variants: alpha dropout, Gaussian dropout, bias-dropout-add.
//
// Kernels only: launches, layouts and validation live in fastdrop/_cupy_variants.py. Spatial and
// variational dropout, DropConnect's masked weight and every backward that is a scaled select run
// the core kernels of dropout.cu. Formulas and counter use: docs/variants.md.
//
// Bit-for-bit with fastdrop.reference: every float operation is written as an explicitly rounded
// instruction (no FMA contraction, no flush-to-zero under CuPy's -ftz=true); the Gaussian's
// log, sin and cos are series built from +, *, / and sqrt only, with the reference's constants
// and operation order. The arithmetic helpers above the kernels are plain C++ with CUDA
// qualifiers, so a host program built by g++ (tests/test_variants.py) can check them.
#include "select.cuh"

namespace fastdrop {

// --- explicitly rounded arithmetic ----------------------------------------------------------

FASTDROP_HD float add_f32(float a, float b) {
#if defined(__CUDA_ARCH__)
    float sum;
    asm("add.rn.f32 %0, %1, %2;" : "=f"(sum) : "f"(a), "f"(b));
    return sum;
#else
    return a + b;
#endif
}

FASTDROP_HD float f32_from_f64(double value) {
#if defined(__CUDA_ARCH__)
    float result;
    asm("cvt.rn.f32.f64 %0, %1;" : "=f"(result) : "d"(value));
    return result;
#else
    return (float)value;
#endif
}

FASTDROP_HD double add_f64(double a, double b) {
#if defined(__CUDA_ARCH__)
    return __dadd_rn(a, b);
#else
    return a + b;
#endif
}

FASTDROP_HD double multiply_f64(double a, double b) {
#if defined(__CUDA_ARCH__)
    return __dmul_rn(a, b);
#else
    return a * b;
#endif
}

FASTDROP_HD double divide_f64(double a, double b) {
#if defined(__CUDA_ARCH__)
    return __ddiv_rn(a, b);
#else
    return a / b;
#endif
}

FASTDROP_HD double sqrt_f64(double a) {
#if defined(__CUDA_ARCH__)
    return __dsqrt_rn(a);
#else
    return __builtin_sqrt(a);
#endif
}

// Number of significant bits of a nonzero 64-bit integer.
FASTDROP_HD int bit_length(u64 n) {
#if defined(__CUDA_ARCH__)
    return 64 - __clzll((long long)n);
#else
    return 64 - __builtin_clzll(n);
#endif
}

// Storage dtype T (select.cuh's traits) seen through its compute type: float for 16- and 32-bit
// storage, double for float64.
template <class T> struct Compute;

template <> struct Compute<Float16> {
    typedef float type;
    static FASTDROP_HD float load(u16 raw) { return f16_to_f32(raw); }
    static FASTDROP_HD u16 store(float value) { return f32_to_f16(value); }
    static FASTDROP_HD float multiply(float a, float b) { return multiply_f32(a, b); }
    static FASTDROP_HD float add(float a, float b) { return add_f32(a, b); }
    static FASTDROP_HD float from_f64(double value) { return f32_from_f64(value); }
};

template <> struct Compute<BFloat16> {
    typedef float type;
    static FASTDROP_HD float load(u16 raw) { return bf16_to_f32(raw); }
    static FASTDROP_HD u16 store(float value) { return f32_to_bf16(value); }
    static FASTDROP_HD float multiply(float a, float b) { return multiply_f32(a, b); }
    static FASTDROP_HD float add(float a, float b) { return add_f32(a, b); }
    static FASTDROP_HD float from_f64(double value) { return f32_from_f64(value); }
};

template <> struct Compute<Float32> {
    typedef float type;
    static FASTDROP_HD float load(u32 raw) { return float_from_bits(raw); }
    static FASTDROP_HD u32 store(float value) { return bits_from_float(value); }
    static FASTDROP_HD float multiply(float a, float b) { return multiply_f32(a, b); }
    static FASTDROP_HD float add(float a, float b) { return add_f32(a, b); }
    static FASTDROP_HD float from_f64(double value) { return f32_from_f64(value); }
};

template <> struct Compute<Float64> {
    typedef double type;
    static FASTDROP_HD double load(u64 raw) { return double_from_bits(raw); }
    static FASTDROP_HD u64 store(double value) { return bits_from_double(value); }
    static FASTDROP_HD double multiply(double a, double b) { return multiply_f64(a, b); }
    static FASTDROP_HD double add(double a, double b) { return add_f64(a, b); }
    static FASTDROP_HD double from_f64(double value) { return value; }
};

// --- the element operations -----------------------------------------------------------------

// Alpha dropout: keep ? a * x + shift : dropped (all in the compute type, rounded once).
template <class T>
FASTDROP_HD typename T::raw alpha_select(typename T::raw x, bool keep, typename Compute<T>::type a,
                                         typename Compute<T>::type shift,
                                         typename Compute<T>::type dropped) {
    typedef Compute<T> C;
    return C::store(keep ? C::add(C::multiply(C::load(x), a), shift) : dropped);
}

// Bias-dropout-add: residual + (keep ? (x + bias) * scale : 0); HAS_BIAS false skips the add.
template <class T, bool HAS_BIAS>
FASTDROP_HD typename T::raw bias_dropout_add_element(typename T::raw x, typename T::raw bias,
                                                     typename T::raw residual, bool keep,
                                                     typename Compute<T>::type scale) {
    typedef Compute<T> C;
    typename C::type value = C::load(x);
    if (HAS_BIAS) value = C::add(value, C::load(bias));
    value = keep ? C::multiply(value, scale) : (typename C::type)0;
    return C::store(C::add(C::load(residual), value));
}

// Box-Muller from a word pair, as fastdrop.reference.standard_normals: radius from
// u = (radius_word + 1) / 2**32, angle 2 pi (angle_word + 1/2) / 2**32; the cosine one is the
// even element's normal, the sine one the odd element's. Both at once: they share the logarithm,
// the square root and the sine and cosine polynomials.
struct NormalPair { double even, odd; };

FASTDROP_HD NormalPair standard_normal_pair(u32 radius_word, u32 angle_word) {
    const double LN2 = 0.6931471805599453;
    const double SQRT_HALF = 0.7071067811865476;
    const double PI_OVER_4 = 0.7853981633974483;

    // ln(u): u + 1 = m * 2**e exactly, m reduced to [sqrt(1/2), sqrt(2)), ln m by the atanh series.
    const u64 n = (u64)radius_word + 1ull;
    int exponent = bit_length(n);
    double mantissa = divide_f64((double)n, (double)(1ull << exponent));
    if (mantissa < SQRT_HALF) {
        mantissa = multiply_f64(mantissa, 2.0);
        exponent -= 1;
    }
    const double s = divide_f64(add_f64(mantissa, -1.0), add_f64(mantissa, 1.0));
    const double s2 = multiply_f64(s, s);
    const double log_series[11] = {1.0, 0.3333333333333333, 0.2, 0.14285714285714285,
                                   0.1111111111111111, 0.09090909090909091, 0.07692307692307693,
                                   0.06666666666666667, 0.058823529411764705, 0.05263157894736842,
                                   0.047619047619047616};
    double series = log_series[10];
#pragma unroll
    for (int k = 9; k >= 0; --k) series = add_f64(multiply_f64(series, s2), log_series[k]);
    const double log_u = add_f64(multiply_f64((double)(exponent - 32), LN2),
                                 multiply_f64(multiply_f64(2.0, s), series));
    const double radius = sqrt_f64(multiply_f64(-2.0, log_u));

    // sin and cos: octant from the top three bits, odd octants reflected, Taylor on [0, pi/4].
    const u32 LOW_BITS = (1u << 29) - 1u;
    const u32 octant = angle_word >> 29;
    const bool octant_odd = (octant & 1u) != 0;
    const u32 low = octant_odd ? LOW_BITS - (angle_word & LOW_BITS) : angle_word & LOW_BITS;
    const double psi = multiply_f64(multiply_f64(add_f64((double)low, 0.5), 1.862645149230957e-09),
                                    PI_OVER_4);
    const double t = multiply_f64(psi, psi);
    const double sin_series[8] = {-0.16666666666666666, 0.008333333333333333,
                                  -0.0001984126984126984, 2.7557319223985893e-06,
                                  -2.505210838544172e-08, 1.6059043836821613e-10,
                                  -7.647163731819816e-13, 2.8114572543455206e-15};
    const double cos_series[9] = {-0.5, 0.041666666666666664, -0.001388888888888889,
                                  2.48015873015873e-05, -2.755731922398589e-07,
                                  2.08767569878681e-09, -1.1470745597729725e-11,
                                  4.779477332387385e-14, -1.5619206968586225e-16};
    double sin_poly = sin_series[7];
#pragma unroll
    for (int k = 6; k >= 0; --k) sin_poly = add_f64(multiply_f64(sin_poly, t), sin_series[k]);
    double cos_poly = cos_series[8];
#pragma unroll
    for (int k = 7; k >= 0; --k) cos_poly = add_f64(multiply_f64(cos_poly, t), cos_series[k]);
    const double sin_psi = add_f64(psi, multiply_f64(multiply_f64(psi, t), sin_poly));
    const double cos_psi = add_f64(1.0, multiply_f64(t, cos_poly));
    const double sin_a = octant_odd ? cos_psi : sin_psi;
    const double cos_a = octant_odd ? sin_psi : cos_psi;
    // theta = quadrant * pi / 2 + a (negation is exact).
    const u32 quadrant = octant >> 1;
    const double sin_theta =
        quadrant == 0 ? sin_a : quadrant == 1 ? cos_a : quadrant == 2 ? -sin_a : -cos_a;
    const double cos_theta =
        quadrant == 0 ? cos_a : quadrant == 1 ? -sin_a : quadrant == 2 ? -cos_a : sin_a;
    NormalPair pair;
    pair.even = multiply_f64(radius, cos_theta);
    pair.odd = multiply_f64(radius, sin_theta);
    return pair;
}

// Both normals of element g's pair (words 2 (g >> 1) and 2 (g >> 1) + 1) from the block
// holding it.
FASTDROP_HD NormalPair normal_pair_of(const PhiloxBlock& block, u64 g) {
    const bool high_pair = (g & 2ull) != 0;
    return standard_normal_pair(high_pair ? block.w2 : block.w0, high_pair ? block.w3 : block.w1);
}

// The normal of element g.
FASTDROP_HD double normal_of(const PhiloxBlock& block, u64 g) {
    const NormalPair pair = normal_pair_of(block, g);
    return (g & 1ull) != 0 ? pair.odd : pair.even;
}

// 1 + sigma z in float64, rounded once to the compute type.
template <class T>
FASTDROP_HD typename Compute<T>::type gaussian_multiplier(double sigma, double z) {
    return Compute<T>::from_f64(add_f64(1.0, multiply_f64(sigma, z)));
}

}  // namespace fastdrop

// The kernels: CUDA only (NVRTC, nvcc), or the tests' CPU emulation of them
// (tests/cuda_emulator/emulation.hpp).
#if defined(__CUDACC__) || defined(__CUDACC_RTC__) || defined(FASTDROP_CUDA_EMULATION)

#include "warp.cuh"

namespace fastdrop {

// One rank-3 launch of fastdrop._layout (strides in elements, mask strides in words): a thread
// takes 8 consecutive elements of a row and reuses a Philox block while they stay inside it.
// OP is ALPHA (keep test, affine) or GAUSSIAN (multiplier from the element's word pair). ACROSS
// as in dropout.cu's strided_pass: a warp's lanes take consecutive rows (the columns kernels).
enum Operation { ALPHA = 0, GAUSSIAN = 1 };

template <class T, int OP, bool ACROSS>
__device__ __forceinline__ void variant_rows(const typename T::raw* x, long long x_start,
                                             typename T::raw* y, long long y_start,
                                             long long size0, long long size1, long long size2,
                                             long long x0, long long x1, long long x2,
                                             long long y0, long long y1, long long y2,
                                             u64 word_offset, long long m0, long long m1,
                                             long long m2, u32 key0, u32 key1, u64 threshold,
                                             typename Compute<T>::type a,
                                             typename Compute<T>::type shift,
                                             typename Compute<T>::type dropped, double sigma) {
    typedef Compute<T> C;
    const long long chunks = (size2 + 7) / 8;
    const long long total = size0 * size1 * chunks;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long chunk = (long long)blockIdx.x * blockDim.x + threadIdx.x; chunk < total;
         chunk += stride) {
        const ChunkStep step = chunk_step<ACROSS>(chunk, chunks, size0, size1);
        const long long i0 = step.i0, i1 = step.i1, first = step.first;
        const typename T::raw* x_row = x + x_start + i0 * x0 + i1 * x1;
        typename T::raw* y_row = y + y_start + i0 * y0 + i1 * y1;
        const u64 row_word = word_offset + ((u64)i0 * (u64)m0 + (u64)i1 * (u64)m1);
        u64 cached_q = ~0ull;
        PhiloxBlock block = {0u, 0u, 0u, 0u};
        typename C::type multiplier = (typename C::type)1;
        // Gaussian: the pair last computed (element words 2 k and 2 k + 1 share one Box-Muller).
        u64 cached_pair = ~0ull;
        NormalPair normals = {0.0, 0.0};
        const int count = (int)smaller(8LL, size2 - first);
#pragma unroll 1
        for (int j = 0; j < count; ++j) {
            const long long i2 = first + j;
            const u64 word = row_word + (u64)i2 * (u64)m2;
            const bool fresh = (word >> 2) != cached_q;
            if (fresh) {
                cached_q = word >> 2;
                block = philox_block(cached_q, key0, key1);
            }
            if (OP == ALPHA) {
                const bool keep = keeps(block_word(block, (u32)(word & 3)), threshold);
                y_row[i2 * y2] = alpha_select<T>(x_row[i2 * x2], keep, a, shift, dropped);
            } else {
                // A broadcast row (m2 == 0) draws one normal for all its elements.
                if (m2 != 0 || j == 0) {
                    if ((word >> 1) != cached_pair) {  // a new pair lies in the current block
                        cached_pair = word >> 1;
                        normals = normal_pair_of(block, word);
                    }
                    multiplier = gaussian_multiplier<T>(sigma, (word & 1ull) != 0 ? normals.odd
                                                                                : normals.even);
                }
                y_row[i2 * y2] = C::store(C::multiply(C::load(x_row[i2 * x2]), multiplier));
            }
        }
    }
}

// variant_rows for rows of 32 elements and more that step by one element in x or y (the host
// chooses, as for dropout.cu's rows kernels): a warp per 32 consecutive elements of a row, lane
// l the element first + l, so loads and stores are coalesced; blocks from warp_block. Gaussian:
// both lanes of a word pair compute its Box-Muller (the thread-per-8 kernel computes it once).
// ACROSS is variant_rows's, and false here.
template <class T, int OP, bool ACROSS>
__device__ __forceinline__ void variant_rows_warp(const typename T::raw* x, long long x_start,
                                                  typename T::raw* y, long long y_start,
                                                  long long size0, long long size1,
                                                  long long size2, long long x0, long long x1,
                                                  long long x2, long long y0, long long y1,
                                                  long long y2, u64 word_offset, long long m0,
                                                  long long m1, long long m2, u32 key0, u32 key1,
                                                  u64 threshold, typename Compute<T>::type a,
                                                  typename Compute<T>::type shift,
                                                  typename Compute<T>::type dropped,
                                                  double sigma) {
    static_assert(!ACROSS, "variant_rows_warp walks along rows");
    typedef Compute<T> C;
    const int lane = threadIdx.x & 31;
    const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const long long warps = ((long long)gridDim.x * blockDim.x) >> 5;
    const long long segments = (size2 + 31) / 32;
    const long long total = size0 * size1 * segments;
    for (long long task = warp; task < total; task += warps) {  // the same tasks for all lanes
        const RowStep step = row_step(task, segments, size1, size2, lane);
        const u64 word = step_word(step, word_offset, m0, m1, m2);
        const PhiloxBlock block = warp_block(word, lane, step.last, key0, key1);  // every lane
        if (!step.valid) continue;
        const typename T::raw value = x[x_start + step.i0 * x0 + step.i1 * x1 + step.i2 * x2];
        typename T::raw result;
        if (OP == ALPHA) {
            result = alpha_select<T>(value, keeps(block_word(block, (u32)(word & 3)), threshold), a,
                                     shift, dropped);
        } else {
            const NormalPair normals = normal_pair_of(block, word);
            const typename C::type multiplier =
                gaussian_multiplier<T>(sigma, (word & 1ull) != 0 ? normals.odd : normals.even);
            result = C::store(C::multiply(C::load(value), multiplier));
        }
        y[y_start + step.i0 * y0 + step.i1 * y1 + step.i2 * y2] = result;
    }
}

// Bias-dropout-add over (rows, width) views: element i (flat C order) uses word offset + i. One
// thread per Philox block: the elements whose words lie in block q. VECTOR: offset % 4 == 0,
// width % 4 == 0 and every array C-contiguous and aligned to 4 elements, so a thread's four
// elements are one aligned vector of each array in one row.
template <class T, bool HAS_BIAS, bool VECTOR>
__device__ __forceinline__ void bias_dropout_add_pass(const typename T::raw* x, long long x0,
                                                      long long x1, const typename T::raw* bias,
                                                      const typename T::raw* residual,
                                                      long long r0, long long r1,
                                                      typename T::raw* y, long long y0,
                                                      long long y1, long long rows,
                                                      long long width, u64 offset, u32 key0,
                                                      u32 key1, u64 threshold,
                                                      typename Compute<T>::type scale) {
    typedef typename T::raw raw;
    struct __align__(4 * sizeof(raw)) Four { raw v[4]; };
    const long long n = rows * width;
    const u64 first_block = offset >> 2;
    const long long blocks = (long long)(((offset + (u64)(n - 1)) >> 2) - first_block) + 1;
    for (long long b = (long long)blockIdx.x * blockDim.x + threadIdx.x; b < blocks;
         b += (long long)gridDim.x * blockDim.x) {
        const PhiloxBlock block = philox_block(first_block + (u64)b, key0, key1);
        const u32 words[4] = {block.w0, block.w1, block.w2, block.w3};
        if (VECTOR) {
            const long long i = 4 * b;  // the first element of this block
            const long long row = i / width;
            const long long column = i - row * width;
            const Four xv = *reinterpret_cast<const Four*>(x + row * x0 + column);
            const Four rv = *reinterpret_cast<const Four*>(residual + row * r0 + column);
            Four bv = {{0, 0, 0, 0}};
            if (HAS_BIAS) bv = *reinterpret_cast<const Four*>(bias + column);
            Four yv;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                yv.v[j] = bias_dropout_add_element<T, HAS_BIAS>(xv.v[j], bv.v[j], rv.v[j],
                                                               keeps(words[j], threshold), scale);
            }
            *reinterpret_cast<Four*>(y + row * y0 + column) = yv;
        } else {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const u64 word = 4 * (first_block + (u64)b) + (u64)j;
                if (word < offset || word - offset >= (u64)n) continue;
                const long long i = (long long)(word - offset);
                const long long row = i / width;
                const long long column = i - row * width;
                y[row * y0 + column * y1] = bias_dropout_add_element<T, HAS_BIAS>(
                    x[row * x0 + column * x1], HAS_BIAS ? bias[column] : (raw)0,
                    residual[row * r0 + column * r1], keeps(words[j], threshold), scale);
            }
        }
    }
}

}  // namespace fastdrop

using namespace fastdrop;

#define FASTDROP_VARIANT_KERNEL extern "C" __global__ void __launch_bounds__(256, 4)

// KIND strided and columns: variant_rows (a thread per 8 elements, along or across rows); KIND
// rows: variant_rows_warp.
#define FASTDROP_VARIANT_ROWS_KIND(NAME, T, OP, SUFFIX, KIND, PASS, ACROSS)                        \
    FASTDROP_VARIANT_KERNEL fastdrop_##NAME##_##KIND##_##SUFFIX(                                   \
        const T::raw* x, long long x_start, T::raw* y, long long y_start, long long size0,         \
        long long size1, long long size2, long long x0, long long x1, long long x2,                \
        long long y0, long long y1, long long y2, u64 word_offset, long long m0, long long m1,     \
        long long m2, u32 key0, u32 key1, u64 threshold, Compute<T>::type a,                       \
        Compute<T>::type shift, Compute<T>::type dropped, double sigma) {                          \
        PASS<T, OP, ACROSS>(x, x_start, y, y_start, size0, size1, size2, x0, x1, x2, y0, y1, y2,   \
                            word_offset, m0, m1, m2, key0, key1, threshold, a, shift, dropped,     \
                            sigma);                                                                \
    }

#define FASTDROP_VARIANT_ROWS(NAME, T, OP, SUFFIX)                                                 \
    FASTDROP_VARIANT_ROWS_KIND(NAME, T, OP, SUFFIX, strided, variant_rows, false)                  \
    FASTDROP_VARIANT_ROWS_KIND(NAME, T, OP, SUFFIX, columns, variant_rows, true)                   \
    FASTDROP_VARIANT_ROWS_KIND(NAME, T, OP, SUFFIX, rows, variant_rows_warp, false)

#define FASTDROP_BIAS_DROPOUT_ADD(T, SUFFIX, HAS_BIAS, VECTOR, NAME)                               \
    FASTDROP_VARIANT_KERNEL fastdrop_bias_dropout_add_##NAME##_##SUFFIX(                           \
        const T::raw* x, long long x0, long long x1, const T::raw* bias, const T::raw* residual,   \
        long long r0, long long r1, T::raw* y, long long y0, long long y1, long long rows,         \
        long long width, u64 offset, u32 key0, u32 key1, u64 threshold,                            \
        Compute<T>::type scale) {                                                                  \
        bias_dropout_add_pass<T, HAS_BIAS, VECTOR>(x, x0, x1, bias, residual, r0, r1, y, y0, y1,   \
                                                   rows, width, offset, key0, key1, threshold,     \
                                                   scale);                                         \
    }

#define FASTDROP_VARIANT_DTYPE(SUFFIX, T)                                                          \
    FASTDROP_VARIANT_ROWS(alpha, T, ALPHA, SUFFIX)                                                 \
    FASTDROP_VARIANT_ROWS(gaussian, T, GAUSSIAN, SUFFIX)                                           \
    FASTDROP_BIAS_DROPOUT_ADD(T, SUFFIX, true, true, bias_vector)                                  \
    FASTDROP_BIAS_DROPOUT_ADD(T, SUFFIX, false, true, vector)                                      \
    FASTDROP_BIAS_DROPOUT_ADD(T, SUFFIX, true, false, bias_strided)                                \
    FASTDROP_BIAS_DROPOUT_ADD(T, SUFFIX, false, false, strided)

FASTDROP_VARIANT_DTYPE(f16, Float16)
FASTDROP_VARIANT_DTYPE(bf16, BFloat16)
FASTDROP_VARIANT_DTYPE(f32, Float32)
FASTDROP_VARIANT_DTYPE(f64, Float64)

#endif  // __CUDACC__ || __CUDACC_RTC__ || FASTDROP_CUDA_EMULATION
