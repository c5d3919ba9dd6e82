// Philox4x32-10 and the keep decision of fastdrop's RNG contract (docs/rng-contract.md).
//
// Plain C++ with CUDA qualifiers and no includes, so the same text compiles under NVRTC (the GPU
// kernels), nvcc and g++ (the host harness in tests/test_cuda_host.py that checks it against
// fastdrop.reference bit for bit).
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define FASTDROP_HD __host__ __device__ __forceinline__
#else
#define FASTDROP_HD inline
#endif

namespace fastdrop {

typedef unsigned int u32;
typedef unsigned long long u64;

// The four 32-bit words of one Philox block (one counter).
struct PhiloxBlock {
    u32 w0, w1, w2, w3;
};

FASTDROP_HD void multiply_wide(u32 a, u32 b, u32& high, u32& low) {
#if defined(__CUDA_ARCH__)
    high = __umulhi(a, b);
    low = a * b;
#else
    const u64 product = (u64)a * b;
    high = (u32)(product >> 32);
    low = (u32)product;
#endif
}

// Salmon et al. (SC'11): ten rounds, key bumped by the Weyl constants between rounds.
FASTDROP_HD PhiloxBlock philox4x32_10(u32 c0, u32 c1, u32 c2, u32 c3, u32 k0, u32 k1) {
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        u32 high0, low0, high1, low1;
        multiply_wide(0xD2511F53u, c0, high0, low0);
        multiply_wide(0xCD9E8D57u, c2, high1, low1);
        const u32 next0 = high1 ^ c1 ^ k0;
        const u32 next2 = high0 ^ c3 ^ k1;
        c0 = next0;
        c1 = low1;
        c2 = next2;
        c3 = low0;
    }
    PhiloxBlock block = {c0, c1, c2, c3};
    return block;
}

// Block q of a seed's stream: counter (q low, q high, 0, 0), key (seed low, seed high).
FASTDROP_HD PhiloxBlock philox_block(u64 q, u32 key0, u32 key1) {
    return philox4x32_10((u32)q, (u32)(q >> 32), 0u, 0u, key0, key1);
}

// Word j (0..3) of a block; a select chain, so a runtime j never forces the block into memory.
FASTDROP_HD u32 block_word(const PhiloxBlock& block, u32 j) {
    return j == 0 ? block.w0 : j == 1 ? block.w1 : j == 2 ? block.w2 : block.w3;
}

// Word g of the stream: word g & 3 of block g >> 2.
FASTDROP_HD u32 random_word(u64 g, u32 key0, u32 key1) {
    return block_word(philox_block(g >> 2, key0, key1), (u32)(g & 3));
}

// threshold = round((1 - p) * 2**32) lies in [0, 2**32]: a 64-bit compare lets 2**32 keep all.
FASTDROP_HD bool keeps(u32 word, u64 threshold) {
    return (u64)word < threshold;
}

}  // namespace fastdrop
