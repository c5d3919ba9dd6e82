// fastdrop's CUDA kernels: fused dropout forward/backward, packed keep bits, raw words.
//
// Kernels only: launch configuration, layouts and validation live in fastdrop/_cupy_backend.py.
// Every element with mask index m uses word offset + m of the seed's Philox stream, so results
// do not depend on the grid, block size or GPU (docs/rng-contract.md, docs/gpu.md).
#include "select.cuh"
#include "warp.cuh"

namespace fastdrop {

// Contiguous path: each lane owns ELEMENTS consecutive elements, whole Philox blocks' worth
// (4 per block) and whole 16-byte vectors: 8 x 16-bit or 4 x 32-bit in one uint4, 4 x 64-bit
// in two.
template <class T>
struct Vector {
    static const int ELEMENTS = sizeof(typename T::raw) == 2 ? 8 : 4;
    static const int BLOCKS = ELEMENTS / 4;
    static const int LOADS = ELEMENTS * (int)sizeof(typename T::raw) / 16;
};

template <class T>
__device__ __forceinline__ void load_vector(const typename T::raw* source,
                                            typename T::raw (&values)[Vector<T>::ELEMENTS]) {
    const uint4* vectors = reinterpret_cast<const uint4*>(source);
#pragma unroll
    for (int v = 0; v < Vector<T>::LOADS; ++v) {
        const uint4 data = vectors[v];
        const u32 words[4] = {data.x, data.y, data.z, data.w};
#pragma unroll
        for (int w = 0; w < 4; ++w) {
            if (sizeof(typename T::raw) == 2) {
                values[8 * v + 2 * w] = (typename T::raw)(words[w] & 0xFFFFu);
                values[8 * v + 2 * w + 1] = (typename T::raw)(words[w] >> 16);
            } else if (sizeof(typename T::raw) == 4) {
                values[4 * v + w] = (typename T::raw)words[w];
            } else if (w % 2 == 0) {
                values[2 * v + w / 2] = (typename T::raw)(((u64)words[w + 1] << 32) | words[w]);
            }
        }
    }
}

template <class T>
__device__ __forceinline__ void store_vector(typename T::raw* target,
                                             const typename T::raw (&values)[Vector<T>::ELEMENTS]) {
    uint4* vectors = reinterpret_cast<uint4*>(target);
#pragma unroll
    for (int v = 0; v < Vector<T>::LOADS; ++v) {
        u32 words[4];
#pragma unroll
        for (int w = 0; w < 4; ++w) {
            if (sizeof(typename T::raw) == 2) {
                words[w] = (u32)values[8 * v + 2 * w] | ((u32)values[8 * v + 2 * w + 1] << 16);
            } else if (sizeof(typename T::raw) == 4) {
                words[w] = (u32)values[4 * v + w];
            } else {
                const u64 value = (u64)values[2 * v + w / 2];
                words[w] = (w % 2 == 0) ? (u32)value : (u32)(value >> 32);
            }
        }
        uint4 data;  // field by field: make_uint4 needs a header NVRTC may not pre-include
        data.x = words[0];
        data.y = words[1];
        data.z = words[2];
        data.w = words[3];
        vectors[v] = data;
    }
}

// Keep flags (bit j for element i0 + j) of one lane in the contiguous path.
//
// With offset % 4 == R != 0 a lane's words straddle BLOCKS + 1 Philox blocks. Rather than have
// every lane compute the extra block, lane l takes it from lane l - 1 (whose last block it is)
// and lane 0 from lane 31 of the warp's previous tile (`carry`); only a warp's first tile
// computes it. Hence each warp walks a contiguous run of tiles. All 32 lanes must run this.
template <class T, int R>
__device__ __forceinline__ u32 contiguous_flags(u64 q, long long valid, bool first, int lane,
                                                PhiloxBlock& carry, u32 key0, u32 key1,
                                                u64 threshold) {
    const int BLOCKS = Vector<T>::BLOCKS;
    PhiloxBlock own[BLOCKS];
#pragma unroll
    for (int b = 0; b < BLOCKS; ++b) own[b] = philox_block(q + (R != 0 ? 1 : 0) + b, key0, key1);
    PhiloxBlock previous = own[0];
    if (R != 0) {
        previous = shuffle_block(own[BLOCKS - 1], 1, true);
        if (lane == 0) previous = carry;
        if (first) previous = philox_block(q, key0, key1);
        carry = shuffle_block(own[BLOCKS - 1], 31, false);
    }
    u32 flags = 0;
#pragma unroll
    for (int j = 0; j < Vector<T>::ELEMENTS; ++j) {
        // Element j takes word R + j of (previous, own[0], own[1], ...); word j of own if R == 0.
        const int index = R != 0 ? R + j : j + 4;
        const PhiloxBlock& block = index < 4 ? previous : own[(index - 4) / 4];
        const u32 word = block_word(block, (u32)(index % 4));
        flags |= (keeps(word, threshold) && j < valid ? 1u : 0u) << j;
    }
    return flags;
}

// FROM_BITS: read the keep flags from `bits` (backward from stored bits) instead of Philox;
// otherwise write them to `bits` when it is not null (forward with keep_bits).
template <class T, int R, bool FROM_BITS>
__device__ __forceinline__ void contiguous_pass(const typename T::raw* x, typename T::raw* y,
                                                long long n, u64 offset, u32 key0, u32 key1,
                                                u64 threshold, typename T::scale_type scale,
                                                unsigned char* bits) {
    const int ELEMENTS = Vector<T>::ELEMENTS;
    const long long TILE = 32LL * ELEMENTS;
    const int lane = threadIdx.x & 31;
    const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const long long warps = ((long long)gridDim.x * blockDim.x) >> 5;
    const long long tiles = (n + TILE - 1) / TILE;
    const long long tiles_per_warp = (tiles + warps - 1) / warps;
    const long long tile_end = smaller(tiles, (warp + 1) * tiles_per_warp);
    PhiloxBlock carry = {0u, 0u, 0u, 0u};
    bool first = true;
    for (long long tile = warp * tiles_per_warp; tile < tile_end; ++tile, first = false) {
        const long long i0 = tile * TILE + (long long)lane * ELEMENTS;
        const long long valid = n - i0;  // elements of this lane inside the array (may be <= 0)
        u32 flags;
        if (FROM_BITS) {
            const u32 byte = valid > 0 ? bits[i0 >> 3] : 0u;
            flags = ELEMENTS == 8 ? byte : (byte >> (i0 & 4)) & 0xFu;
        } else {
            flags = contiguous_flags<T, R>((offset + (u64)i0) >> 2, valid, first, lane, carry,
                                           key0, key1, threshold);
        }
        typename T::raw values[ELEMENTS];
        if (valid >= ELEMENTS) {
            load_vector<T>(x + i0, values);
#pragma unroll
            for (int j = 0; j < ELEMENTS; ++j) {
                values[j] = T::select(values[j], (flags >> j) & 1u, scale);
            }
            store_vector<T>(y + i0, values);
        } else {
            for (int j = 0; j < valid; ++j) {
                y[i0 + j] = T::select(x[i0 + j], (flags >> j) & 1u, scale);
            }
        }
        if (!FROM_BITS && bits != nullptr) {
            if (ELEMENTS == 8) {
                if (valid > 0) bits[i0 >> 3] = (unsigned char)flags;
            } else {  // two lanes fill one byte: the even lane writes both nibbles
                const u32 upper = __shfl_down_sync(FULL_WARP, flags, 1);
                if ((lane & 1) == 0 && valid > 0) {
                    bits[i0 >> 3] = (unsigned char)(flags | (upper << 4));
                }
            }
        }
    }
}

// Rows of 32 elements and more that step by one element in x or y: one rank-3 launch of
// fastdrop._layout (strides in elements, mask strides in words, any sign), a warp per 32
// consecutive elements of a row per step, lane l the element first + l, so that loads and stores
// are coalesced (tests/cuda_emulator/check_coalescing.py); the Philox blocks come from
// warp_word. Fused bits (forward) only for a single row whose mask index is its element index
// (the caller guarantees it): a ballot gives each step's four bytes. FROM_BITS reads bit `word`.
// ACROSS is strided_pass's, and false here: the warps of rows_pass always walk along a row.
template <class T, bool FROM_BITS, bool ACROSS>
__device__ __forceinline__ void rows_pass(const typename T::raw* x, long long x_start,
                                         typename T::raw* y, long long y_start,
                                         long long size0, long long size1, long long size2,
                                         long long x0, long long x1, long long x2,
                                         long long y0, long long y1, long long y2,
                                         u64 word_offset, long long m0, long long m1,
                                         long long m2, u32 key0, u32 key1, u64 threshold,
                                         typename T::scale_type scale, unsigned char* bits) {
    static_assert(!ACROSS, "rows_pass walks along rows");
    const int lane = threadIdx.x & 31;
    const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const long long warps = ((long long)gridDim.x * blockDim.x) >> 5;
    const long long segments = (size2 + 31) / 32;
    const long long total = size0 * size1 * segments;
    for (long long task = warp; task < total; task += warps) {  // the same tasks for all lanes
        const RowStep step = row_step(task, segments, size1, size2, lane);
        const long long first = step.first, i0 = step.i0, i1 = step.i1, i2 = step.i2;
        const bool valid = step.valid;
        const u64 word = step_word(step, word_offset, m0, m1, m2);
        bool keep;
        if (FROM_BITS) {
            keep = valid && ((bits[word >> 3] >> (word & 7)) & 1u);
        } else {
            const u32 drawn = warp_word(word, lane, step.last, key0, key1);  // every lane shuffles
            keep = valid && keeps(drawn, threshold);
        }
        if (valid) {
            y[y_start + i0 * y0 + i1 * y1 + i2 * y2] =
                T::select(x[x_start + i0 * x0 + i1 * x1 + i2 * x2], keep, scale);
        }
        if (!FROM_BITS && bits != nullptr) {
            const u32 flags = __ballot_sync(FULL_WARP, keep);
            if (lane < 4 && first + 8 * lane < size2) {
                bits[(first >> 3) + lane] = (unsigned char)(flags >> (8 * lane));
            }
        }
    }
}

// General path, for the other rank-3 launches (rows shorter than 32 elements, where a warp per
// 32 would leave most lanes idle, or stepping by more than one element in both x and y): a
// thread takes 8 consecutive elements of a row and reuses a Philox block while consecutive
// elements stay inside it. ACROSS (the columns kernels, for launches whose axis 1 steps by one
// element in x or y): a warp's lanes take consecutive rows (see chunk_step), so each of their
// steps is one coalesced request. Same arguments and bits as rows_pass.
template <class T, bool FROM_BITS, bool ACROSS>
__device__ __forceinline__ void strided_pass(const typename T::raw* x, long long x_start,
                                             typename T::raw* y, long long y_start,
                                             long long size0, long long size1, long long size2,
                                             long long x0, long long x1, long long x2,
                                             long long y0, long long y1, long long y2,
                                             u64 word_offset, long long m0, long long m1,
                                             long long m2, u32 key0, u32 key1, u64 threshold,
                                             typename T::scale_type scale, unsigned char* bits) {
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
        u32 flags = 0;
        const int count = (int)smaller(8LL, size2 - first);
#pragma unroll 1
        for (int j = 0; j < count; ++j) {
            const long long i2 = first + j;
            const u64 word = row_word + (u64)i2 * (u64)m2;
            bool keep;
            if (FROM_BITS) {
                keep = (bits[word >> 3] >> (word & 7)) & 1u;
            } else {
                if ((word >> 2) != cached_q) {
                    cached_q = word >> 2;
                    block = philox_block(cached_q, key0, key1);
                }
                keep = keeps(block_word(block, (u32)(word & 3)), threshold);
            }
            y_row[i2 * y2] = T::select(x_row[i2 * x2], keep, scale);
            flags |= (keep ? 1u : 0u) << j;
        }
        if (!FROM_BITS && bits != nullptr) bits[first >> 3] = (unsigned char)flags;
    }
}

}  // namespace fastdrop

using namespace fastdrop;

// 256 threads a block (the wrapper launches exactly that). Kernels that fit in 32 registers ask
// for 8 blocks an SM (full occupancy); the shuffle-carrying and strided ones ask for 4 (up to 64
// registers), since at 8 ptxas spills them and at no minimum it once squeezed one into a spill.
#define FASTDROP_KERNEL extern "C" __global__ void __launch_bounds__(256, 8)
#define FASTDROP_KERNEL_WIDE extern "C" __global__ void __launch_bounds__(256, 4)

#define FASTDROP_CONTIGUOUS_FORWARD(NAME, T, R, KERNEL)                                           \
    KERNEL fastdrop_forward_contiguous_r##R##_##NAME(                                             \
        const T::raw* x, T::raw* y, long long n, u64 offset, u32 key0, u32 key1, u64 threshold,   \
        T::scale_type scale, unsigned char* bits) {                                               \
        contiguous_pass<T, R, false>(x, y, n, offset, key0, key1, threshold, scale, bits);        \
    }

// The forward and apply-bits kernels of one rank-3 row layout (PASS: rows_pass or strided_pass,
// with its ACROSS), named fastdrop_forward_KIND_NAME and fastdrop_apply_bits_KIND_NAME.
#define FASTDROP_STRIDED_KERNELS(NAME, T, KIND, PASS, ACROSS)                                      \
    FASTDROP_KERNEL_WIDE fastdrop_forward_##KIND##_##NAME(                                         \
        const T::raw* x, long long x_start, T::raw* y, long long y_start, long long size0,         \
        long long size1, long long size2, long long x0, long long x1, long long x2,                \
        long long y0, long long y1, long long y2, u64 word_offset, long long m0, long long m1,     \
        long long m2, u32 key0, u32 key1, u64 threshold, T::scale_type scale,                      \
        unsigned char* bits) {                                                                     \
        PASS<T, false, ACROSS>(x, x_start, y, y_start, size0, size1, size2, x0, x1, x2, y0, y1,    \
                               y2, word_offset, m0, m1, m2, key0, key1, threshold, scale, bits);   \
    }                                                                                              \
    FASTDROP_KERNEL fastdrop_apply_bits_##KIND##_##NAME(                                           \
        const T::raw* x, long long x_start, T::raw* y, long long y_start, long long size0,         \
        long long size1, long long size2, long long x0, long long x1, long long x2,                \
        long long y0, long long y1, long long y2, u64 word_offset, long long m0, long long m1,     \
        long long m2, const unsigned char* bits, T::scale_type scale) {                            \
        PASS<T, true, ACROSS>(x, x_start, y, y_start, size0, size1, size2, x0, x1, x2, y0, y1, y2, \
                              word_offset, m0, m1, m2, 0u, 0u, 0ull, scale,                        \
                              const_cast<unsigned char*>(bits));                                   \
    }

#define FASTDROP_DTYPE_KERNELS(NAME, T)                                                            \
    FASTDROP_CONTIGUOUS_FORWARD(NAME, T, 0, FASTDROP_KERNEL)                                       \
    FASTDROP_CONTIGUOUS_FORWARD(NAME, T, 1, FASTDROP_KERNEL_WIDE)                                  \
    FASTDROP_CONTIGUOUS_FORWARD(NAME, T, 2, FASTDROP_KERNEL_WIDE)                                  \
    FASTDROP_CONTIGUOUS_FORWARD(NAME, T, 3, FASTDROP_KERNEL_WIDE)                                  \
    FASTDROP_KERNEL fastdrop_apply_bits_contiguous_##NAME(                                         \
        const T::raw* x, T::raw* y, long long n, const unsigned char* bits,                        \
        T::scale_type scale) {                                                                     \
        contiguous_pass<T, 0, true>(x, y, n, 0ull, 0u, 0u, 0ull, scale,                            \
                                    const_cast<unsigned char*>(bits));                             \
    }                                                                                              \
    FASTDROP_STRIDED_KERNELS(NAME, T, rows, rows_pass, false)                                      \
    FASTDROP_STRIDED_KERNELS(NAME, T, strided, strided_pass, false)                                \
    FASTDROP_STRIDED_KERNELS(NAME, T, columns, strided_pass, true)

FASTDROP_DTYPE_KERNELS(f16, Float16)
FASTDROP_DTYPE_KERNELS(bf16, BFloat16)
FASTDROP_DTYPE_KERNELS(f32, Float32)
FASTDROP_DTYPE_KERNELS(f64, Float64)

// Words offset .. offset + n - 1 of the stream; one thread per Philox block.
FASTDROP_KERNEL fastdrop_random_bits(u32* out, long long n, u64 offset, u32 key0, u32 key1) {
    const u64 first_block = offset >> 2;
    const long long blocks = (long long)(((offset + (u64)(n - 1)) >> 2) - first_block) + 1;
    for (long long b = (long long)blockIdx.x * blockDim.x + threadIdx.x; b < blocks;
         b += (long long)gridDim.x * blockDim.x) {
        const PhiloxBlock block = philox_block(first_block + (u64)b, key0, key1);
#pragma unroll
        for (u32 j = 0; j < 4; ++j) {
            const u64 word = 4 * (first_block + (u64)b) + j;
            if (word >= offset && word - offset < (u64)n) out[word - offset] = block_word(block, j);
        }
    }
}

// Boolean keep flags of mask elements 0 .. n - 1 (one byte each); one thread per Philox block.
FASTDROP_KERNEL fastdrop_keep_flags(unsigned char* out, long long n, u64 offset, u32 key0, u32 key1,
                                    u64 threshold) {
    const u64 first_block = offset >> 2;
    const long long blocks = (long long)(((offset + (u64)(n - 1)) >> 2) - first_block) + 1;
    for (long long b = (long long)blockIdx.x * blockDim.x + threadIdx.x; b < blocks;
         b += (long long)gridDim.x * blockDim.x) {
        const PhiloxBlock block = philox_block(first_block + (u64)b, key0, key1);
#pragma unroll
        for (u32 j = 0; j < 4; ++j) {
            const u64 word = 4 * (first_block + (u64)b) + j;
            if (word >= offset && word - offset < (u64)n) {
                out[word - offset] = keeps(block_word(block, j), threshold) ? 1 : 0;
            }
        }
    }
}

// Packed keep flags of mask elements 0 .. n - 1, for masks that broadcast (the forward pass runs
// over the input, not the mask, so it cannot fill them). One thread per byte.
FASTDROP_KERNEL fastdrop_pack_keep_bits(unsigned char* bits, long long n, u64 offset, u32 key0,
                                        u32 key1, u64 threshold) {
    const long long bytes = (n + 7) / 8;
    for (long long byte = (long long)blockIdx.x * blockDim.x + threadIdx.x; byte < bytes;
         byte += (long long)gridDim.x * blockDim.x) {
        u64 cached_q = ~0ull;
        PhiloxBlock block = {0u, 0u, 0u, 0u};
        u32 flags = 0;
        const int count = (int)smaller(8LL, n - 8 * byte);
#pragma unroll 1
        for (int j = 0; j < count; ++j) {
            const u64 word = offset + (u64)(8 * byte + j);
            if ((word >> 2) != cached_q) {
                cached_q = word >> 2;
                block = philox_block(cached_q, key0, key1);
            }
            flags |= (keeps(block_word(block, (u32)(word & 3)), threshold) ? 1u : 0u) << j;
        }
        bits[byte] = (unsigned char)flags;
    }
}
