// Runs fastdrop's CUDA kernels on the CPU, for the tests (tests/cuda_emulator/cupy), part 1 of 2.
//
// Goes ahead of an assembled kernel source (kernels/*.cu with their headers inlined); the
// runtime (emulation_runtime.hpp) and a table of the kernels follow it. This part turns the CUDA
// qualifiers into plain C++ and supplies what the kernels use of the device: threadIdx /
// blockIdx / blockDim / gridDim, uint4, the three full-warp shuffles, the votes and
// __reduce_or_sync. It includes no header,
// so a kernel that leans on the C++ library (which NVRTC lacks) fails to build here as there.
// A launch runs every block, one warp at a time; the 32 lanes of a warp are fibers on one OS
// thread, switched only at a shuffle, so a warp's lanes meet at every shuffle as on a GPU.
// The kernels' device-only arithmetic (__CUDA_ARCH__ branches: PTX, __umulhi) is not compiled
// here: the host branches run instead, the same ones tests/test_cuda_host.py checks.
#pragma once

#if !defined(__x86_64__)
#error "the CUDA emulator switches lanes with x86-64 code (fastdrop_emulation_switch)"
#endif

#define FASTDROP_CUDA_EMULATION 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

struct alignas(16) uint4 {
    unsigned x, y, z, w;
};

namespace fastdrop_emulation {

struct Dim3 {
    unsigned x, y, z;
};

enum LaneState { READY = 0, AT_SHUFFLE = 1, DONE = 2 };
enum ShuffleKind { SHUFFLE_INDEX = 1, SHUFFLE_UP = 2, SHUFFLE_DOWN = 3, VOTE_BALLOT = 4, VOTE_ALL = 5,
                   VOTE_ANY = 6, REDUCE_OR = 7 };

struct Lane {
    void* stack_pointer;
    Dim3 thread;
    int state;
    int kind;
    unsigned long long value;
};

typedef void (*Invoker)(void* kernel, void** params);

const int WARP = 32;

// The state of the launch running (one at a time in a process: launches from several threads
// wait for each other, emulation_runtime.hpp's run).
struct Launch {
    Lane lanes[WARP];
    unsigned long long exchanged[WARP];  // the values of the last shuffle every lane reached
    void* scheduler_stack_pointer;
    Lane* current;
    Invoker invoke;
    void* kernel;
    void** params;
    Dim3 block_index, block_dim, grid_dim;
    char* stacks[WARP];  // allocated by the first launch, freed when the library is unloaded
    char error[512];
    inline ~Launch();
};

inline Launch launch_state;  // not thread_local: each access would cost a __tls_get_addr

// Saves the callee-saved general registers on the current stack, stores the stack pointer in
// *save and resumes the fiber whose stack pointer is `target`. (The floating-point control
// words are set once per launch, emulation_runtime.hpp's run, not per switch.)
extern "C" void fastdrop_emulation_switch(void** save, void* target);

inline void fail(const char* message);  // records the launch's first error (emulation_runtime.hpp)

// Called by a lane at a shuffle: wait until the whole warp is there, then read lane `source`'s
// value (the caller's own where `source` lies outside the warp, as shfl.up / shfl.down do).
inline unsigned long long exchange(int kind, unsigned mask, unsigned long long value, int source) {
    Launch& l = launch_state;
    Lane* lane = l.current;
    if (mask != 0xFFFFFFFFu) fail("a shuffle with a partial mask (not emulated)");
    lane->value = value;
    lane->kind = kind;
    lane->state = AT_SHUFFLE;
    fastdrop_emulation_switch(&lane->stack_pointer, l.scheduler_stack_pointer);
    l.current = lane;
    if (source < 0 || source >= WARP) return value;
    return l.exchanged[source];
}

template <class T>
inline unsigned long long to_bits(T value) {
    static_assert(sizeof(T) <= 8, "a shuffle moves at most 64 bits");
    unsigned long long bits = 0;
    __builtin_memcpy(&bits, &value, sizeof value);
    return bits;
}

template <class T>
inline T from_bits(unsigned long long bits) {
    T value;
    __builtin_memcpy(&value, &bits, sizeof value);
    return value;
}

inline int lane_id() { return (int)(launch_state.current->thread.x % WARP); }

// A warp-wide vote or reduction: every lane's value, combined as `kind` says.
inline unsigned collective(int kind, unsigned mask, unsigned value) {
    exchange(kind, mask, value, 0);
    const unsigned long long* values = launch_state.exchanged;
    unsigned result = kind == VOTE_ALL ? 1u : 0u;
    for (int lane = 0; lane < WARP; ++lane) {
        const unsigned v = (unsigned)values[lane];
        if (kind == VOTE_BALLOT) result |= (v != 0u ? 1u : 0u) << lane;
        else if (kind == VOTE_ALL) result &= v != 0u ? 1u : 0u;
        else if (kind == VOTE_ANY) result |= v != 0u ? 1u : 0u;
        else result |= v;
    }
    return result;
}

}  // namespace fastdrop_emulation

#define threadIdx (::fastdrop_emulation::launch_state.current->thread)
#define blockIdx (::fastdrop_emulation::launch_state.block_index)
#define blockDim (::fastdrop_emulation::launch_state.block_dim)
#define gridDim (::fastdrop_emulation::launch_state.grid_dim)

template <class T>
inline T __shfl_sync(unsigned mask, T value, int source, int width = 32) {
    using namespace fastdrop_emulation;
    if (width != 32) fail("a shuffle with width other than 32 (not emulated)");
    return from_bits<T>(exchange(SHUFFLE_INDEX, mask, to_bits(value), ((source % 32) + 32) % 32));
}

template <class T>
inline T __shfl_up_sync(unsigned mask, T value, unsigned delta, int width = 32) {
    using namespace fastdrop_emulation;
    if (width != 32) fail("a shuffle with width other than 32 (not emulated)");
    return from_bits<T>(exchange(SHUFFLE_UP, mask, to_bits(value), lane_id() - (int)delta));
}

template <class T>
inline T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32) {
    using namespace fastdrop_emulation;
    if (width != 32) fail("a shuffle with width other than 32 (not emulated)");
    return from_bits<T>(exchange(SHUFFLE_DOWN, mask, to_bits(value), lane_id() + (int)delta));
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
    return fastdrop_emulation::collective(fastdrop_emulation::VOTE_BALLOT, mask, predicate != 0);
}

inline int __all_sync(unsigned mask, int predicate) {
    return (int)fastdrop_emulation::collective(fastdrop_emulation::VOTE_ALL, mask, predicate != 0);
}

inline int __any_sync(unsigned mask, int predicate) {
    return (int)fastdrop_emulation::collective(fastdrop_emulation::VOTE_ANY, mask, predicate != 0);
}

inline unsigned __reduce_or_sync(unsigned mask, unsigned value) {
    return fastdrop_emulation::collective(fastdrop_emulation::REDUCE_OR, mask, value);
}

// The kernel source follows.
