// The CUDA emulator's runtime, part 2 of 2: after the kernel source (see emulation.hpp).
//
// Fibers and the warp scheduler, the kernels' signatures and `run`, the whole launch. Checked
// during a launch, and reported as an error instead of a result: a shuffle reached by only some
// lanes of a warp (others had returned), lanes of one warp at different kinds of shuffle, masks
// other than the full warp, grids or blocks that are not one-dimensional. Blocks run in an order
// shuffled per launch, so a kernel relying on the order of blocks would show it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <type_traits>
#include <utility>

namespace fastdrop_emulation {

const std::size_t STACK_BYTES = 256 * 1024;
const unsigned DEFAULT_MXCSR = 0x1F80;      // round to nearest, all exceptions masked, no FTZ/DAZ
const unsigned short DEFAULT_X87 = 0x037F;  // round to nearest, extended precision, all masked

asm(R"(
    .pushsection .text
    .p2align 4
    .type fastdrop_emulation_switch, @function
fastdrop_emulation_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size fastdrop_emulation_switch, .-fastdrop_emulation_switch
    .popsection
)");

inline Launch::~Launch() {
    for (char* stack : stacks) delete[] stack;
}

inline void fail(const char* message) {
    Launch& l = launch_state;
    if (l.error[0] == '\0') {
        std::snprintf(l.error, sizeof l.error, "block %u, warp starting at thread %u: %s",
                      l.block_index.x, l.lanes[0].thread.x, message);
    }
}

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
    std::uintptr_t sp = ret - 48;  // six callee-saved registers
    std::memset((void*)sp, 0, 48);
    return (void*)sp;
}

// The default floating-point control state for a launch (round to nearest, no flush to zero:
// not whatever the calling thread had set), and the caller's back afterwards.
struct ControlWords {
    unsigned mxcsr;
    unsigned short x87;
    ControlWords() {
        asm volatile("stmxcsr %0" : "=m"(mxcsr));
        asm volatile("fnstcw %0" : "=m"(x87));
        asm volatile("ldmxcsr %0" : : "m"(DEFAULT_MXCSR));
        asm volatile("fldcw %0" : : "m"(DEFAULT_X87));
    }
    ~ControlWords() {
        asm volatile("ldmxcsr %0" : : "m"(mxcsr));
        asm volatile("fldcw %0" : : "m"(x87));
    }
};

inline std::mutex launch_mutex;

// Gives up the current lane for good: the launch fails with the error already recorded.
[[noreturn]] inline void abandon_lane() {
    Launch& l = launch_state;
    Lane* lane = l.current;
    lane->state = DONE;
    fastdrop_emulation_switch(&lane->stack_pointer, l.scheduler_stack_pointer);
    std::abort();
}

#if defined(FASTDROP_EMULATION_TRACE)
// Memory tracing (a build instrumented by GCC's -fsanitize=address with calls for every access,
// whose runtime is the handful of functions below instead of libasan): each access by a lane to
// a traced range is recorded with the lane's count of traced accesses so far, so that the k-th
// accesses of a warp's 32 lanes (one instruction on a GPU, where lanes run in step) can be put
// together, e.g. into the 32-byte sectors a warp's request touches.
struct TraceRecord {
    unsigned long long address, step;
    unsigned block, thread, size, store;
};

const int MAX_RANGES = 32;

struct Trace {
    const unsigned long long* ranges = nullptr;  // start, end, start, end, ...
    int range_count = 0;
    TraceRecord* records = nullptr;
    unsigned long long capacity = 0, count = 0;
    // Per lane, range and direction: a lane's k-th load of an array pairs with the other lanes'
    // k-th load of it, whatever else some lanes access in between (bits only even lanes write).
    unsigned long long lane_steps[WARP][MAX_RANGES][2] = {};
    bool overflow = false;
};

inline Trace trace;  // guarded by launch_mutex, like launch_state

// Not instrumented itself (it would call itself for its own accesses).
__attribute__((no_sanitize_address)) inline void record(std::uintptr_t address, unsigned size,
                                                        bool store) {
    Trace& t = trace;
    Launch& l = launch_state;
    if (t.records == nullptr || l.current == nullptr) return;
    int range = -1;
    for (int r = 0; r < t.range_count && range < 0; ++r) {
        if (address >= t.ranges[2 * r] && address < t.ranges[2 * r + 1]) range = r;
    }
    if (range < 0) return;
    const unsigned lane = (unsigned)(l.current - l.lanes);
    const unsigned long long step = t.lane_steps[lane][range][store ? 1 : 0]++;
    if (t.count == t.capacity) {
        t.overflow = true;
        return;
    }
    t.records[t.count++] = TraceRecord{address, step, l.block_index.x, l.current->thread.x, size,
                                       store ? 1u : 0u};
}
#endif

// Runs one warp (threads `first` .. `first + count - 1` of the block) to completion.
inline bool run_warp(unsigned first, unsigned count) {
    Launch& l = launch_state;
#if defined(FASTDROP_EMULATION_TRACE)
    for (auto& lane : trace.lane_steps) {
        for (auto& range : lane) range[0] = range[1] = 0;
    }
#endif
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

// A whole launch: every block (in an order shuffled by `order_seed`), warp by warp.
// Returns 0, or 1 with the message in `error`.
inline int run(const Entry& kernel, const unsigned grid[3], const unsigned block[3], void** params,
               unsigned long long order_seed) {
    ControlWords control_words;
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
    for (char*& stack : l.stacks) {
        if (stack == nullptr) stack = new char[STACK_BYTES];
    }
    l.invoke = kernel.invoke;
    l.kernel = kernel.kernel;
    l.params = params;
    l.grid_dim = Dim3{grid[0], 1, 1};
    l.block_dim = Dim3{block[0], 1, 1};
    // Block b runs (b * step + start) mod n-th, with step coprime to n: a permutation.
    const unsigned long long n = grid[0];
    unsigned long long step = n > 1 ? 1 + (order_seed * 0x9E3779B97F4A7C15ull >> 33) % (n - 1) : 1;
    auto gcd = [](unsigned long long a, unsigned long long b) {
        while (b != 0) {
            const unsigned long long t = a % b;
            a = b;
            b = t;
        }
        return a;
    };
    while (gcd(step, n) != 1) ++step;
    const unsigned long long start = order_seed % n;
    for (unsigned long long b = 0; b < n; ++b) {
        l.block_index = Dim3{(unsigned)((b * step + start) % n), 0, 0};
        for (unsigned first = 0; first < block[0]; first += WARP) {
            const unsigned count = block[0] - first < (unsigned)WARP ? block[0] - first : WARP;
            if (!run_warp(first, count)) return 1;
            if (l.error[0] != '\0') return 1;
        }
    }
    return 0;
}

}  // namespace fastdrop_emulation

// The kernels are built with -fsanitize=alignment: a misaligned access (a uint4 or other vector
// load at an address a GPU would fault on) calls this instead of going on. Same layout as GCC's
// and Clang's UBSan runtime data; defined here (hidden), so the kernels call this one.
struct FastdropUbsanLocation {
    const char* file;
    unsigned line, column;
};
struct FastdropUbsanMismatch {
    FastdropUbsanLocation location;
    const void* type;
    unsigned char log_alignment;
    unsigned char check_kind;
};

extern "C" void __ubsan_handle_type_mismatch_v1(FastdropUbsanMismatch* data, void* pointer) {
    char message[400];
    std::snprintf(message, sizeof message,
                  "misaligned access at %s:%u:%u: address %p, the type needs %u-byte alignment "
                  "(a GPU faults here)",
                  data->location.file, data->location.line, data->location.column, pointer,
                  1u << data->log_alignment);
    fastdrop_emulation::fail(message);
    fastdrop_emulation::abandon_lane();
}

extern "C" void __ubsan_handle_type_mismatch_v1_abort(FastdropUbsanMismatch* data, void* pointer) {
    __ubsan_handle_type_mismatch_v1(data, pointer);
}

#define FASTDROP_EMULATION_EXPORT extern "C" __attribute__((visibility("default")))

namespace fastdrop_emulation {

// One launch, start to end under launch_mutex: its error message copied to `error`, and in a
// tracing build its accesses to the `range_count` ranges recorded into `records` (their number,
// or ~0 if more than `capacity`, into `*recorded`).
__attribute__((no_sanitize_address)) inline int launch(
    const Entry& kernel, const unsigned grid[3], const unsigned block[3], void** params,
    unsigned long long order_seed, char* error, int error_size, const unsigned long long* ranges,
    int range_count, void* records, unsigned long long capacity, unsigned long long* recorded) {
    std::lock_guard<std::mutex> one_at_a_time(launch_mutex);
#if defined(FASTDROP_EMULATION_TRACE)
    Trace& t = trace;
    t.ranges = ranges;
    t.range_count = range_count < MAX_RANGES ? range_count : MAX_RANGES;
    t.capacity = capacity;
    t.count = 0;
    t.overflow = false;
    t.records = static_cast<TraceRecord*>(records);
#else
    (void)ranges, (void)range_count, (void)records, (void)capacity;
#endif
    const int rc = run(kernel, grid, block, params, order_seed);
#if defined(FASTDROP_EMULATION_TRACE)
    *recorded = t.overflow ? ~0ull : t.count;
    t.records = nullptr;
#else
    *recorded = 0;
#endif
    std::snprintf(error, (std::size_t)error_size, "%s", launch_state.error);
    return rc;
}

}  // namespace fastdrop_emulation

#if defined(FASTDROP_EMULATION_TRACE)
extern "C" {
void __asan_init() {}
void __asan_version_mismatch_check_v8() {}
void __asan_handle_no_return() {}
void __asan_before_dynamic_init(const char*) {}
void __asan_after_dynamic_init() {}
#define FASTDROP_TRACE_SIZE(N)                                                                   \
    void __asan_load##N##_noabort(std::uintptr_t a) { fastdrop_emulation::record(a, N, false); } \
    void __asan_store##N##_noabort(std::uintptr_t a) { fastdrop_emulation::record(a, N, true); }
FASTDROP_TRACE_SIZE(1)
FASTDROP_TRACE_SIZE(2)
FASTDROP_TRACE_SIZE(4)
FASTDROP_TRACE_SIZE(8)
FASTDROP_TRACE_SIZE(16)
void __asan_loadN_noabort(std::uintptr_t a, std::size_t n) { fastdrop_emulation::record(a, (unsigned)n, false); }
void __asan_storeN_noabort(std::uintptr_t a, std::size_t n) { fastdrop_emulation::record(a, (unsigned)n, true); }
}

#endif
