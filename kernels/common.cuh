// Shared device helpers for Engine's kernels (the role ggml-cuda's common.cuh plays).
// Every kernel file includes this; keep it to small, obviously-correct building blocks.
#pragma once

#define ENGINE_WARP_SIZE 32

// Sum of v over the 32 lanes of a warp; every lane gets the result.
static __device__ __forceinline__ float warp_reduce_sum(float v) {
#pragma unroll
    for (int offset = ENGINE_WARP_SIZE / 2; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

// Maximum of v over the 32 lanes of a warp; every lane gets the result.
static __device__ __forceinline__ float warp_reduce_max(float v) {
#pragma unroll
    for (int offset = ENGINE_WARP_SIZE / 2; offset > 0; offset >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    }
    return v;
}

// Sum of v over the whole thread block (blockDim.x a multiple of 32, at most 1024); every thread
// gets the result. Uses 32 floats of shared memory; contains __syncthreads(), so every thread of
// the block must call it.
static __device__ __forceinline__ float block_reduce_sum(float v) {
    __shared__ float partial[ENGINE_WARP_SIZE];
    const int lane = threadIdx.x % ENGINE_WARP_SIZE;
    const int warp = threadIdx.x / ENGINE_WARP_SIZE;
    v = warp_reduce_sum(v);
    if (lane == 0) {
        partial[warp] = v;
    }
    __syncthreads();
    const int warps = blockDim.x / ENGINE_WARP_SIZE;
    v = lane < warps ? partial[lane] : 0.0f;
    v = warp_reduce_sum(v);
    __syncthreads(); // partial[] may be reused by a following call
    return v;
}

// Slot of the key of rank `rank` among the batch keys a row's mask allows (bit j of the row: slot prefix + j).
static __device__ __forceinline__ int masked_slot(const unsigned long long * row_mask, int words, int rank) {
    for (int w = 0; w < words; w++) {
        unsigned long long bits = row_mask[w];
        const int count = __popcll(bits);
        if (rank < count) {
            for (int i = 0; i < rank; i++) {
                bits &= bits - 1; // drop the lowest set bit
            }
            return w * 64 + __ffsll((long long) bits) - 1;
        }
        rank -= count;
    }
    return -1; // not reached: rank < the row's count of visible batch keys
}

// Sliding-window attention (Beltagy et al., "Longformer", 2020; Mistral 7B, Gemma 2/3): a row sees no
// slot below its window start `lo` (window_start[row], or 0 without a window). Its keys, by rank, are
// slots lo.. up to the prefix's end — for a causal batch up to the row's own slot — then, under a mask,
// its visible batch slots in order (the host has already cleared the bits the window excludes).
static __device__ __forceinline__ int window_start(const int * __restrict__ starts, int row) {
    return starts == nullptr ? 0 : starts[row];
}

// How many keys a row sees (as above).
static __device__ __forceinline__ int visible_keys(int prefix, int row, int lo, const unsigned long long * row_mask, int words) {
    if (row_mask == nullptr) {
        return prefix + row + 1 - lo;
    }
    int visible = max(0, prefix - lo);
    for (int w = 0; w < words; w++) {
        visible += __popcll(row_mask[w]);
    }
    return visible;
}

// The slot of a row's key of rank `rank` (as above).
static __device__ __forceinline__ int rank_slot(int rank, int prefix, int lo, const unsigned long long * row_mask, int words) {
    const int committed = max(0, prefix - lo);
    return row_mask == nullptr || rank < committed ? lo + rank : prefix + masked_slot(row_mask, words, rank - committed);
}

// GELU with the tanh approximation, ½x(1 + tanh(√(2/π)(x + 0.044715x³))), as Activations.GeluTanh.
static __device__ __forceinline__ float gelu_tanh(float x) {
    const float inner = 0.7978845608028654f * fmaf(0.044715f * x, x * x, x);
    return 0.5f * x * (1.0f + tanhf(inner));
}

// Gemma 2's attention soft-capping: cap · tanh(s / cap), the identity for cap = 0.
static __device__ __forceinline__ float soft_cap(float s, float cap) {
    return cap > 0.0f ? cap * tanhf(s / cap) : s;
}

// Maximum of v over the whole thread block (as block_reduce_sum: every thread must call it).
static __device__ __forceinline__ float block_reduce_max(float v) {
    __shared__ float partial_max[ENGINE_WARP_SIZE];
    const int lane = threadIdx.x % ENGINE_WARP_SIZE;
    const int warp = threadIdx.x / ENGINE_WARP_SIZE;
    v = warp_reduce_max(v);
    if (lane == 0) {
        partial_max[warp] = v;
    }
    __syncthreads();
    const int warps = blockDim.x / ENGINE_WARP_SIZE;
    v = lane < warps ? partial_max[lane] : -INFINITY;
    v = warp_reduce_max(v);
    __syncthreads();
    return v;
}

// KV cache elements: float32, or binary16 (half the bytes every attention step reads). Attention
// computes in float32 either way: a half is widened exactly on load, and rounded once on store.
#include <cuda_fp16.h>
static __device__ __forceinline__ float kv_load(const float * p) { return *p; }
static __device__ __forceinline__ float kv_load(const __half * p) { return __half2float(*p); }
static __device__ __forceinline__ void kv_store(float * p, float v) { *p = v; }
static __device__ __forceinline__ void kv_store(__half * p, float v) { *p = __float2half_rn(v); }

// SwiGLU's product silu(g)·u, silu(g) = g·σ(g) — one expression for swiglu_f32 and the gate/up GEMV's
// epilogue, so that the fused and the separate step round alike.
static __device__ __forceinline__ float silu_mul(float g, float u) {
    const float sigmoid = 1.0f / (1.0f + expf(-g));
    return sigmoid * g * u;
}

// RoPE's rotation of one pair by (cos, sin) — shared by rope_f32 and rope_store_kv (rope_kv.cu).
static __device__ __forceinline__ void rope_pair(float x0, float x1, float cf, float sf, float & y0, float & y1) {
    y0 = x0 * cf - x1 * sf;
    y1 = x0 * sf + x1 * cf;
}

// Threads that normalize one row in rms_norm_row: rms_norm_f32 runs with this many, and so does every
// kernel that folds an RMSNorm into its epilogue, so that the sum of squares adds in one order.
#define RMS_NORM_THREADS 128

// y = x / sqrt(mean(x²) + eps) · w for one row of `cols`, by a whole block of RMS_NORM_THREADS threads
// (each thread strides by the block). `load` reads x (L1-cached or not, as the caller needs); y may
// alias x: each element is read, then written by the same thread, after the reduction.
template <typename Load>
static __device__ __forceinline__ void rms_norm_row(const float * x, const float * __restrict__ w, float * y, int cols, float eps, Load load) {
    float sum = 0.0f;
    for (int i = threadIdx.x; i < cols; i += RMS_NORM_THREADS) {
        const float v = load(x + i);
        sum += v * v;
    }
    sum = block_reduce_sum(sum);
    const float scale = rsqrtf(sum / cols + eps);
    for (int i = threadIdx.x; i < cols; i += RMS_NORM_THREADS) {
        y[i] = load(x + i) * scale * w[i];
    }
}

// Flash-decoding's merge for one (row, head): dst[d] = Σ_s e^(m_s - M)·acc_s[d] / Σ_s e^(m_s - M)·l_s over
// the splits s, M = max_s m_s, for d = d0, d0 + stride, ... Every thread computes M and the denominator
// itself, in split order. part_acc + first·head_dim and part_ml + first·2 are the (row, head)'s splits.
// Shared by attention_combine_f32 and tree_attention's folded merge, so both round alike; `load` reads
// the partials (past L1 where other blocks wrote them).
template <typename Load>
static __device__ __forceinline__ void combine_head(const float * part_acc, const float * part_ml, float * __restrict__ dst, long long first,
                                                    int head_dim, int splits, int d0, int stride, Load load) {
    float mx = -INFINITY;
    for (int s = 0; s < splits; s++) {
        mx = fmaxf(mx, load(part_ml + (first + s) * 2));
    }
    float den = 0.0f;
    for (int s = 0; s < splits; s++) {
        const float ms = load(part_ml + (first + s) * 2);
        if (ms != -INFINITY) {
            den += expf(ms - mx) * load(part_ml + (first + s) * 2 + 1);
        }
    }
    const float inv = den > 0.0f ? 1.0f / den : 0.0f;
    for (int d = d0; d < head_dim; d += stride) {
        float num = 0.0f;
        for (int s = 0; s < splits; s++) {
            const float ms = load(part_ml + (first + s) * 2);
            if (ms != -INFINITY) {
                num += expf(ms - mx) * load(part_acc + (first + s) * head_dim + d);
            }
        }
        dst[d] = num * inv;
    }
}
