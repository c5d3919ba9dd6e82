// Runs fastdrop's CUDA kernels on the CPU, for the tests (tests/cuda_emulator/cupy).
//
// Included ahead of an assembled kernel source (kernels/*.cu with their headers inlined), this
// header turns the CUDA qualifiers into plain C++ and supplies what the kernels use of the
// device: threadIdx / blockIdx / blockDim / gridDim, uint4 and the three full-warp shuffles.
// A launch runs every block, one warp at a time; the 32 lanes of a warp are fibers on one OS
// thread, switched only at a shuffle, so a warp's lanes meet at every shuffle as on a GPU.
// The kernels' device-only arithmetic (__CUDA_ARCH__ branches: PTX, __umulhi) is not compiled
// here: the host branches run instead, the same ones tests/test_cuda_host.py checks.
//
// Checked during a launch, and reported as an error instead of a result: a shuffle reached by
// only some lanes of a warp (others had returned), lanes of one warp at different shuffle kinds,
// masks other than the full warp, and grids or blocks that are not one-dimensional.
#pragma once

#if !defined(__x86_64__)
#error "the CUDA emulator switches lanes with x86-64 code (fastdrop_emulation_switch)"
#endif

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

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
const std::size_t STACK_BYTES = 256 * 1024;

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
    std::vector<char*> stacks;
    char error[512];
};

inline thread_local Launch launch_state;

}  // namespace fastdrop_emulation

#define threadIdx (::fastdrop_emulation::launch_state.current->thread)
#define blockIdx (::fastdrop_emulation::launch_state.block_index)
#define blockDim (::fastdrop_emulation::launch_state.block_dim)
#define gridDim (::fastdrop_emulation::launch_state.grid_dim)

namespace fastdrop_emulation {

// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack, stores
// the stack pointer in *save and resumes the fiber whose stack pointer is `target`.
extern "C" void fastdrop_emulation_switch(void** save, void* target);
asm(R"(
    .text
    .p2align 4
    .type fastdrop_emulation_switch, @function
fastdrop_emulation_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size fastdrop_emulation_switch, .-fastdrop_emulation_switch
)");

// A lane's first code: run the kernel, mark the lane done, go back to the scheduler for good.
inline void lane_main() {
    Launch& l = launch_state;
    l.invoke(l.kernel, l.params);
    Lane* lane = l.current;
    lane->state = DONE;
    fastdrop_emulation_switch(&lane->stack_pointer, l.scheduler_stack_pointer);
    std::abort();  // a finished lane is never resumed
}

// A fresh stack whose first switch "returns" into lane_main with the ABI's alignment.
inline void* fresh_stack(char* stack) {
    std::uintptr_t top = (std::uintptr_t)(stack + STACK_BYTES) & ~(std::uintptr_t)15;
    std::uintptr_t ret = top - 16;  // lane_main starts with rsp = ret + 8, i.e. 8 mod 16
    *(void**)ret = (void*)&lane_main;
    *(void**)(ret + 8) = nullptr;
    std::uintptr_t sp = ret - 56;  // six callee-saved registers and the control words
    std::memset((void*)sp, 0, 56);
    unsigned mxcsr;
    unsigned short x87;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(x87));
    std::memcpy((void*)sp, &mxcsr, 4);
    std::memcpy((void*)(sp + 4), &x87, 2);
    return (void*)sp;
}

inline void fail(const char* message) {
    Launch& l = launch_state;
    if (l.error[0] == '\0') {
        std::snprintf(l.error, sizeof l.error, "block %u, warp starting at thread %u: %s",
                      l.block_index.x, l.lanes[0].thread.x, message);
    }
}

// Runs one warp (lanes `first` .. `first + count - 1` of the block) to completion.
inline bool run_warp(unsigned first, unsigned count) {
    Launch& l = launch_state;
    for (unsigned i = 0; i < count; ++i) {
        Lane& lane = l.lanes[i];
        lane.thread = Dim3{first + i, 0, 0};
        lane.state = READY;
        lane.kind = 0;
        lane.stack_pointer = fresh_stack(l.stacks[i]);
    }
    for (;;) {
        for (unsigned i = 0; i < count; ++i) {
            Lane& lane = l.lanes[i];
            if (lane.state != READY) continue;
            l.current = &lane;
            fastdrop_emulation_switch(&l.scheduler_stack_pointer, lane.stack_pointer);
        }
        unsigned waiting = 0, done = 0;
        int kind = 0;
        for (unsigned i = 0; i < count; ++i) {
            if (l.lanes[i].state == DONE) {
                ++done;
            } else {
                ++waiting;
                if (kind == 0) kind = l.lanes[i].kind;
                if (l.lanes[i].kind != kind) {
                    fail("lanes of one warp wait at different kinds of shuffle");
                    return false;
                }
            }
        }
        if (waiting == 0) return true;
        if (done != 0 || count != (unsigned)WARP) {
            fail("a full-warp shuffle was reached by only some lanes (the others had returned "
                 "or do not exist): undefined on a GPU");
            return false;
        }
        for (unsigned i = 0; i < count; ++i) {
            l.exchanged[i] = l.lanes[i].value;
            l.lanes[i].state = READY;
        }
    }
}

// Called by a lane at a shuffle: wait until the whole warp is there, then read lane `source`'s
// value (the caller's own where `source` lies outside the warp, as shfl.up / shfl.down do).
inline unsigned long long exchange(int kind, unsigned mask, unsigned long long value,
                                   int source) {
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
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a scalar");
    unsigned long long bits = 0;
    std::memcpy(&bits, &value, sizeof value);
    return bits;
}

template <class T>
inline T from_bits(unsigned long long bits) {
    T value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
}

inline int lane_id() { return (int)(launch_state.current->thread.x % WARP); }

}  // namespace fastdrop_emulation

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

namespace fastdrop_emulation {

// Argument kinds a launcher must match: p pointer, c pointer to const, f float, i signed, u unsigned.
template <class A>
constexpr char kind_of() {
    return std::is_pointer<A>::value
               ? (std::is_const<typename std::remove_pointer<A>::type>::value ? 'c' : 'p')
           : std::is_floating_point<A>::value ? 'f'
           : std::is_signed<A>::value         ? 'i'
                                              : 'u';
}

template <class... A>
struct Signature {
    static constexpr char kinds[] = {kind_of<A>()..., '\0'};
    static constexpr unsigned sizes[] = {(unsigned)sizeof(A)..., 0u};
};

template <class... A, std::size_t... I>
inline void invoke_with(void* kernel, void** params, std::index_sequence<I...>) {
    reinterpret_cast<void (*)(A...)>(kernel)(*static_cast<A*>(params[I])...);
}

template <class... A>
inline void invoke(void* kernel, void** params) {
    invoke_with<A...>(kernel, params, std::index_sequence_for<A...>{});
}

struct Entry {
    const char* name;
    void* kernel;
    Invoker invoke;
    const char* kinds;
    const unsigned* sizes;
};

template <class... A>
inline Entry entry(const char* name, void (*kernel)(A...)) {
    return Entry{name, reinterpret_cast<void*>(kernel), &invoke<A...>, Signature<A...>::kinds,
                 Signature<A...>::sizes};
}

// A whole launch: every block, warp by warp. Returns 0, or 1 with the message in `error`.
inline int run(const Entry& kernel, const unsigned grid[3], const unsigned block[3], void** params) {
    Launch& l = launch_state;
    l.error[0] = '\0';
    if (grid[1] != 1 || grid[2] != 1 || block[1] != 1 || block[2] != 1 || grid[0] == 0 ||
        block[0] == 0 || block[0] > 1024) {
        std::snprintf(l.error, sizeof l.error,
                      "only one-dimensional grids and blocks of 1..1024 threads are emulated "
                      "(grid %u x %u x %u, block %u x %u x %u)",
                      grid[0], grid[1], grid[2], block[0], block[1], block[2]);
        return 1;
    }
    while (l.stacks.size() < (std::size_t)WARP) l.stacks.push_back(new char[STACK_BYTES]);
    l.invoke = kernel.invoke;
    l.kernel = kernel.kernel;
    l.params = params;
    l.grid_dim = Dim3{grid[0], 1, 1};
    l.block_dim = Dim3{block[0], 1, 1};
    for (unsigned b = 0; b < grid[0]; ++b) {
        l.block_index = Dim3{b, 0, 0};
        for (unsigned first = 0; first < block[0]; first += WARP) {
            const unsigned count = block[0] - first < (unsigned)WARP ? block[0] - first : WARP;
            if (!run_warp(first, count)) return 1;
            if (l.error[0] != '\0') return 1;
        }
    }
    return 0;
}

}  // namespace fastdrop_emulation
