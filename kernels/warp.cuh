// Layout helpers of the CUDA kernels of rank-3 launches (dropout.cu's and variants.cu's): shuffles
// of Philox blocks and the blocks of a warp whose 32 lanes take consecutive elements of a row
// (the rows kernels), and where a thread of the thread-per-8 kernels (strided, columns) stands.
// Device code only: shuffles and nothing newer, so it compiles for sm_75 on.
#pragma once

#include "philox.cuh"

namespace fastdrop {

static const unsigned FULL_WARP = 0xFFFFFFFFu;

// Not min(): its integer overloads come from headers that NVRTC does not always pre-include.
__device__ __forceinline__ long long smaller(long long a, long long b) { return a < b ? a : b; }

// The block held by another lane: lane - delta (up) or lane `delta` itself (broadcast).
__device__ __forceinline__ u32 shuffle_word(u32 word, int delta, bool up) {
    return up ? __shfl_up_sync(FULL_WARP, word, delta) : __shfl_sync(FULL_WARP, word, delta);
}

__device__ __forceinline__ PhiloxBlock shuffle_block(const PhiloxBlock& block, int delta, bool up) {
    PhiloxBlock result;
    result.w0 = shuffle_word(block.w0, delta, up);
    result.w1 = shuffle_word(block.w1, delta, up);
    result.w2 = shuffle_word(block.w2, delta, up);
    result.w3 = shuffle_word(block.w3, delta, up);
    return result;
}

// The Philox block holding word `word`, for every lane of a warp at once (all 32 lanes must
// call it). The words must be linear in the lane up to lane `last` (the same for all lanes;
// lanes past it pass lane 0's word), as along a row. Then the blocks they lie in are
// consecutive, and where there are at most 32 (a mask stepping by up to four words, or none)
// each is computed once, by the lane whose index is its distance from the lowest, and handed
// round by shuffles; otherwise every lane computes its own.
__device__ __forceinline__ PhiloxBlock warp_block(u64 word, int lane, int last, u32 key0,
                                                  u32 key1) {
    const u64 q = word >> 2;
    const u64 q_first = __shfl_sync(FULL_WARP, q, 0);
    const u64 q_last = __shfl_sync(FULL_WARP, q, last);
    const u64 q_low = q_first < q_last ? q_first : q_last;
    const u64 span = (q_first < q_last ? q_last : q_first) - q_low;  // the same in every lane
    // The ballot guards the one case the linearity argument misses: words wrapping past 2**64
    // within a step (a mask stride of about 2**59 or more, which fastdrop._layout never makes).
    if (span < 32 && __ballot_sync(FULL_WARP, q - q_low <= span) == FULL_WARP) {
        PhiloxBlock own = {0u, 0u, 0u, 0u};
        if ((u64)lane <= span) own = philox_block(q_low + (u64)lane, key0, key1);
        return shuffle_block(own, (int)(q - q_low), false);
    }
    return philox_block(q, key0, key1);
}

// The word itself (see warp_block).
__device__ __forceinline__ u32 warp_word(u64 word, int lane, int last, u32 key0, u32 key1) {
    return block_word(warp_block(word, lane, last, key0, key1), (u32)(word & 3));
}

// Where a warp stands in a rows kernel's step over one row: 32 consecutive elements from
// `first`, lane l's element first + l (lanes past the row's end take `first` and must not
// store), `last` the row's last lane.
struct RowStep {
    long long row, first, i0, i1, i2;
    int last;
    bool valid;
};

__device__ __forceinline__ RowStep row_step(long long task, long long segments, long long size1,
                                            long long size2, int lane) {
    RowStep step;
    step.row = task / segments;
    step.first = (task - step.row * segments) * 32;
    step.i0 = step.row / size1;
    step.i1 = step.row - step.i0 * size1;
    step.valid = step.first + lane < size2;
    step.i2 = step.valid ? step.first + lane : step.first;
    step.last = (int)smaller(31LL, size2 - 1 - step.first);
    return step;
}

// The word of a lane's element: word_offset + i0 m0 + i1 m1 + i2 m2 (unsigned products: mask
// strides may be negative, and signed overflow would be undefined).
__device__ __forceinline__ u64 step_word(const RowStep& step, u64 word_offset, long long m0,
                                         long long m1, long long m2) {
    return word_offset + (u64)step.i0 * (u64)m0 + (u64)step.i1 * (u64)m1 + (u64)step.i2 * (u64)m2;
}

// Where a thread of a thread-per-8 kernel stands: elements first .. first + 7 of row (i0, i1).
// ACROSS false (strided kernels): consecutive tasks take consecutive chunks of one row. ACROSS
// true (columns kernels): consecutive tasks take the same chunk of consecutive rows, i1 fastest,
// so where axis 1 steps by one element (a transposed or channels-last view) a warp's lanes touch
// consecutive elements at each of their steps along the row.
struct ChunkStep {
    long long i0, i1, first;
};

template <bool ACROSS>
__device__ __forceinline__ ChunkStep chunk_step(long long task, long long chunks, long long size0,
                                                long long size1) {
    long long row;
    ChunkStep step;
    if (ACROSS) {
        const long long rows = size0 * size1;
        const long long column = task / rows;
        row = task - column * rows;
        step.first = column * 8;
    } else {
        row = task / chunks;
        step.first = (task - row * chunks) * 8;
    }
    step.i0 = row / size1;
    step.i1 = row - step.i0 * size1;
    return step;
}

}  // namespace fastdrop
