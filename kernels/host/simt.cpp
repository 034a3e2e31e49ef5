// The kernel emulator: kernels/*.cu compiled for the host (shim/cuda_runtime_host.h) and run block
// by block, each block's threads as fibers that switch only where CUDA threads may wait
// for each other: __syncthreads and warp shuffles. Exposed to the tests as a tiny "driver":
// engine_emu_function(name) and engine_emu_launch(function, grid, block, args) with CUDA's argument
// convention (args[i] points at parameter i), so the engine's own launchers drive it
// (ENGINE_CUDA_EMULATOR=1, managed/Emulator.cs). Test-only; the engine never ships it.
#include "shim/cuda_runtime_host.h"
#if !defined(__x86_64__)
#error "the kernel emulator's fiber switch is written for x86-64"
#endif
#include <string.h>
#include <stdlib.h>
#include <utility>
#include <vector>

namespace simt {
thread_local dim3 thread_idx, block_idx, block_dim, grid_dim;

namespace {
constexpr size_t StackBytes = 256 * 1024;

// A fiber switch: save the callee-saved registers on the current stack, store its pointer in *save,
// load `load` as the stack pointer and restore that fiber's registers (x86-64 System V). Tens of
// nanoseconds where ucontext's swapcontext makes a system call per switch.
extern "C" void simt_switch(void ** save, void * load);
asm(R"(
.text
.p2align 4
.globl simt_switch
.hidden simt_switch
.type simt_switch,@function
simt_switch:
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
.size simt_switch, .-simt_switch
)");

struct Fiber {
    void * sp = nullptr; // saved stack pointer while switched out
    char * stack = nullptr;
    dim3 idx;
    bool done = false;
    unsigned shuffles = 0; // shuffles made so far: their parity picks the exchange buffer
};

struct Barrier {
    int arrived = 0;
    unsigned generation = 0;
};

struct Block {
    std::vector<Fiber> fibers;
    void * scheduler = nullptr;
    int current = -1;
    int live = 0;
    Barrier block_barrier;
    std::vector<Barrier> warp_barriers;
    std::vector<int> warp_live;
    std::vector<float> exchange_f; // one slot per thread, for shuffles
    std::vector<int> exchange_i;
    void (*body)(void *) = nullptr;
    void * argument = nullptr;
};

thread_local Block * g_block = nullptr;

void yield() {
    Block & b = *g_block;
    simt_switch(&b.fibers[b.current].sp, b.scheduler);
}

// Waits until every live member has arrived; `live` shrinks when threads exit.
void arrive(Barrier & bar, const int & live) {
    const unsigned generation = bar.generation;
    if (++bar.arrived >= live) {
        bar.arrived = 0;
        bar.generation++;
        return;
    }
    while (bar.generation == generation) {
        yield();
    }
}

void release_if_complete(Barrier & bar, int live) {
    if (bar.arrived > 0 && bar.arrived >= live) {
        bar.arrived = 0;
        bar.generation++;
    }
}

[[noreturn]] void trampoline() {
    Block & b = *g_block;
    b.body(b.argument);
    Fiber & f = b.fibers[b.current];
    f.done = true;
    b.live--;
    const int warp = (int) (f.idx.x / 32);
    b.warp_live[warp]--;
    // A thread that leaves must not keep the others waiting at a barrier it will never reach.
    release_if_complete(b.block_barrier, b.live);
    release_if_complete(b.warp_barriers[warp], b.warp_live[warp]);
    simt_switch(&f.sp, b.scheduler);
    __builtin_unreachable();
}

// A fresh stack whose first switch-in "returns" into trampoline, as if it had been called.
void * prepare(char * stack) {
    uintptr_t top = ((uintptr_t) (stack + StackBytes)) & ~(uintptr_t) 15;
    void ** sp = (void **) top;
    *--sp = nullptr;                 // trampoline's (never used) return address: rsp ≡ 8 (mod 16) at entry
    *--sp = (void *) &trampoline;    // popped by simt_switch's ret
    for (int i = 0; i < 6; i++) {
        *--sp = nullptr;             // rbp, rbx, r12-r15
    }
    return sp;
}
} // namespace

void sync_block() { arrive(g_block->block_barrier, g_block->live); }

void sync_warp() {
    const int warp = (int) (thread_idx.x / 32);
    arrive(g_block->warp_barriers[warp], g_block->warp_live[warp]);
}

// A shuffle meets the warp once: lanes write their value, wait for the whole warp, and read. Two
// buffers alternate, so a lane already writing the next shuffle's value cannot overwrite one a slower
// lane has yet to read: to write shuffle k + 2's buffer (k's), a lane must have passed shuffle k + 1's
// barrier, which every lane reaches only after reading shuffle k.
template <typename T>
static T exchange(std::vector<T> & slots, T v, int source) {
    const int warp = (int) (thread_idx.x / 32);
    Fiber & f = g_block->fibers[g_block->current];
    const size_t buffer = (f.shuffles++ & 1u) * (slots.size() / 2);
    slots[buffer + thread_idx.x] = v;
    sync_warp();
    return slots[buffer + warp * 32 + (source & 31)];
}

float shuffle(float v, int source) { return exchange(g_block->exchange_f, v, source); }
int shuffle(int v, int source) { return exchange(g_block->exchange_i, v, source); }

// Runs body(argument) as every thread of every block of the grid.
void run(dim3 grid, dim3 block, void (*body)(void *), void * argument) {
    Block b;
    const int threads = (int) (block.x * block.y * block.z);
    const int warps = (threads + 31) / 32;
    b.fibers.resize(threads);
    b.warp_barriers.resize(warps);
    b.warp_live.resize(warps);
    b.exchange_f.resize(2 * warps * 32);
    b.exchange_i.resize(2 * warps * 32);
    b.body = body;
    b.argument = argument;
    for (auto & f : b.fibers) {
        f.stack = (char *) malloc(StackBytes);
    }
    Block * previous = g_block;
    g_block = &b;
    grid_dim = grid;
    block_dim = block;
    for (unsigned bz = 0; bz < grid.z; bz++)
    for (unsigned by = 0; by < grid.y; by++)
    for (unsigned bx = 0; bx < grid.x; bx++) {
        b.live = threads;
        b.block_barrier = Barrier{};
        for (int w = 0; w < warps; w++) {
            b.warp_barriers[w] = Barrier{};
            b.warp_live[w] = std::min(32, threads - 32 * w);
        }
        for (int t = 0; t < threads; t++) {
            Fiber & f = b.fibers[t];
            f.done = false;
            f.shuffles = 0;
            f.idx = dim3{(unsigned) t % block.x, (unsigned) (t / block.x) % block.y, (unsigned) (t / (block.x * block.y))};
            f.sp = prepare(f.stack);
        }
        block_idx = dim3{bx, by, bz};
        // Round robin until every thread of the block has finished.
        for (int remaining = threads; remaining > 0;) {
            remaining = 0;
            for (int t = 0; t < threads; t++) {
                Fiber & f = b.fibers[t];
                if (f.done) {
                    continue;
                }
                b.current = t;
                thread_idx = f.idx;
                simt_switch(&b.scheduler, f.sp);
                remaining += f.done ? 0 : 1;
            }
        }
    }
    for (auto & f : b.fibers) {
        free(f.stack);
    }
    g_block = previous;
}
} // namespace simt

// ---- the kernels, compiled for the host ----
#include "../getrows.cu"
#include "../gemv.cu"
#include "../dequantize.cu"
#include "../rmsnorm.cu"
#include "../rope.cu"
#include "../rope_kv.cu"
#include "../swiglu.cu"
#include "../add.cu"
#include "../argmax.cu"
#include "../kvcache.cu"
#include "../attention.cu"
#include "../attention_tc.cu"
#include "../tree_attention.cu"
#include "../sampling.cu"
#include "../acceptance.cu"
#include "../moe.cu"
#include "../chunk_sparse_ffn.cu"
#include "../mla.cu"

namespace {
// A kernel of any signature called with CUDA's argument array (args[i] points at parameter i).
struct Entry {
    const char * name;
    void (*call)(void * function, void ** args);
    void * function;
};

template <typename... A, size_t... I>
void call_with(void (*f)(A...), void ** args, std::index_sequence<I...>) {
    f(*(std::remove_reference_t<A> *) args[I]...);
}

template <typename... A>
Entry entry(const char * name, void (*f)(A...)) {
    return Entry{name, [](void * function, void ** args) {
                     call_with((void (*)(A...)) function, args, std::index_sequence_for<A...>{});
                 },
                 (void *) f};
}

#define WEIGHT_ENTRIES(name, type) entry("get_rows_" #name, get_rows_##name), entry("gemv_" #name, gemv_##name), \
    entry("gemv_" #name "_x8", gemv_##name##_x8), entry("gemv_" #name "_glu", gemv_##name##_glu), \
    entry("gemv_" #name "_glu_x8", gemv_##name##_glu_x8), entry("dequantize_" #name "_f16", dequantize_##name##_f16),

#define SPARSE_ENTRIES(name, type) entry("chunk_sparse_up_" #name, chunk_sparse_up_##name), \
    entry("chunk_sparse_down_" #name, chunk_sparse_down_##name), entry("gemv_" #name "_moe_glu", gemv_##name##_moe_glu), \
    entry("gemv_" #name "_moe_down", gemv_##name##_moe_down),

const Entry g_entries[] = {
    ENGINE_FOR_EACH_WEIGHT_TYPE(WEIGHT_ENTRIES)
    ENGINE_FOR_EACH_WEIGHT_TYPE(SPARSE_ENTRIES)
    entry("convert_f32_f16", convert_f32_f16),
    entry("rms_norm_f32", rms_norm_f32),
    entry("rope_f32", rope_f32),
    entry("rope_store_kv_f32", rope_store_kv_f32),
    entry("rope_store_kv_f16", rope_store_kv_f16),
    entry("swiglu_f32", swiglu_f32),
    entry("geglu_f32", geglu_f32),
    entry("add_f32", add_f32),
    entry("add_bias_f32", add_bias_f32),
    entry("scale_f32", scale_f32),
    entry("soft_cap_f32", soft_cap_f32),
    entry("argmax_f32", argmax_f32),
    entry("store_kv_f32", store_kv_f32),
    entry("store_kv_f16", store_kv_f16),
    entry("copy_slot_f32", copy_slot_f32),
    entry("copy_slot_f16", copy_slot_f16),
    entry("attention_f32", attention_f32),
    entry("attention_f16", attention_f16),
    entry("attention_combine_f32", attention_combine_f32),
    entry("attention_prefill_f32", attention_prefill_f32),
    entry("attention_prefill_f16", attention_prefill_f16),
    entry("attention_prefill_tc_f16", attention_prefill_tc_f16),
    entry("tree_attention_f32", tree_attention_f32),
    entry("tree_attention_f16", tree_attention_f16),
    entry("sample_f32", sample_f32),
    entry("top_k_ids_f32", top_k_ids_f32),
    entry("accept_greedy", accept_greedy),
    entry("accept_sampled", accept_sampled),
    entry("moe_combine_f32", moe_combine_f32),
    entry("moe_route_f32", moe_route_f32),
    entry("mla_assemble_f32", mla_assemble_f32),
    entry("mla_compact_f32", mla_compact_f32),
    entry("moe_add_gated_f32", moe_add_gated_f32),
};

struct Launch {
    const Entry * entry;
    void ** args;
};

void run_entry(void * p) {
    Launch & l = *(Launch *) p;
    l.entry->call(l.entry->function, l.args);
}
} // namespace

#define ENGINE_EXPORT extern "C" __attribute__((visibility("default")))

// 1 + the index of the kernel called `name`, or 0 when there is none.
ENGINE_EXPORT long long engine_emu_function(const char * name) {
    for (size_t i = 0; i < sizeof(g_entries) / sizeof(g_entries[0]); i++) {
        if (strcmp(g_entries[i].name, name) == 0) {
            return (long long) i + 1;
        }
    }
    return 0;
}

// Runs the kernel to completion (launches are synchronous here). Returns 0, or -1 for an unknown function.
ENGINE_EXPORT int engine_emu_launch(long long function, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                                    void ** args) {
    if (function <= 0 || function > (long long) (sizeof(g_entries) / sizeof(g_entries[0]))) {
        return -1;
    }
    Launch l{&g_entries[function - 1], args};
    simt::run(dim3{gx, gy, gz}, dim3{bx, by, bz}, run_entry, &l);
    return 0;
}
