// CUDA's execution model on the host, for the kernel emulator (simt.cpp): enough of it to compile
// kernels/*.cu with a C++ compiler and run them on small inputs, so that CI checks the kernels' logic
// (indexing, masks, reductions, shuffles, barriers) without a GPU. Not a performance model and not
// a memory model: blocks run one after another, the threads of a block as cooperative fibers that
// switch only at __syncthreads and warp shuffles — what a correct kernel may rely on.
#pragma once
#define _GNU_SOURCE 1
#include <algorithm>
#include <cmath>
#include <stdint.h>
#include "cuda_fp16.h"

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

namespace simt {
// The fiber now running and the launch it belongs to (set by the scheduler).
extern thread_local dim3 thread_idx;
extern thread_local dim3 block_idx;
extern thread_local dim3 block_dim;
extern thread_local dim3 grid_dim;
void sync_block();
void sync_warp();
// Shuffle: every live lane of the warp offers its value, each takes the one of lane `source`.
float shuffle(float v, int source);
int shuffle(int v, int source);
}

#define threadIdx (simt::thread_idx)
#define blockIdx (simt::block_idx)
#define blockDim (simt::block_dim)
#define gridDim (simt::grid_dim)
#define __global__
#define __shared__ static
#define __launch_bounds__(x)
#define __restrict__ __restrict

static inline void __syncthreads() { simt::sync_block(); }
static inline void __syncwarp(unsigned = 0xffffffffu) { simt::sync_warp(); }
#define __align__(n) __attribute__((aligned(n)))

static inline float __shfl_xor_sync(unsigned, float v, int mask) { return simt::shuffle(v, (int) (simt::thread_idx.x % 32) ^ mask); }
static inline int __shfl_xor_sync(unsigned, int v, int mask) { return simt::shuffle(v, (int) (simt::thread_idx.x % 32) ^ mask); }
static inline float __shfl_sync(unsigned, float v, int lane) { return simt::shuffle(v, lane); }
static inline int __shfl_sync(unsigned, int v, int lane) { return simt::shuffle(v, lane); }

template <typename T> static inline T __ldcg(const T * p) { return *p; }
// Blocks run one after another and a block's fibers switch only at barriers and shuffles: an atomic
// is a plain read-modify-write, and every write is already visible to the blocks that follow.
static inline unsigned atomicAdd(unsigned * p, unsigned v) { const unsigned old = *p; *p = old + v; return old; }
static inline void __threadfence() {}
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __ffsll(long long x) { return __builtin_ffsll(x); }
static inline unsigned __float_as_uint(float f) { unsigned u; __builtin_memcpy(&u, &f, 4); return u; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
using std::min;
using std::max;
