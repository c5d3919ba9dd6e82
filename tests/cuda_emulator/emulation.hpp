// Runs fastdrop's CUDA kernels on the CPU, for the tests (tests/cuda_emulator/cupy), part 1 of 2.
//
// Goes ahead of an assembled kernel source (kernels/*.cu with their headers inlined); the
// runtime (emulation_runtime.hpp) and a table of the kernels follow it. This part turns the CUDA
// qualifiers into plain C++ and supplies what the kernels use of the device: threadIdx /
// blockIdx / blockDim / gridDim, uint4 and the three full-warp shuffles. It includes no header,
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
enum ShuffleKind { SHUFFLE_INDEX = 1, SHUFFLE_UP = 2, SHUFFLE_DOWN = 3 };

struct Lane {
    void* stack_pointer;
    Dim3 thread;
    int state;
    int kind;
    unsigned long long value;
};

typedef void (*Invoker)(void* kernel, void** params);

const int WARP = 32;

// The state of the launch running on this OS thread (each Python thread launches on its own).
struct Launch {
    Lane lanes[WARP];
    unsigned long long exchanged[WARP];  // the values of the last shuffle every lane reached
    void* scheduler_stack_pointer;
    Lane* current;
    Invoker invoke;
    void* kernel;
    void** params;
    Dim3 block_index, block_dim, grid_dim;
    char* stacks[WARP];  // allocated by the first launch on the thread, freed when it ends
    char error[512];
    inline ~Launch();
};

inline thread_local Launch launch_state;

// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack, stores
// the stack pointer in *save and resumes the fiber whose stack pointer is `target`.
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

// The kernel source follows.
