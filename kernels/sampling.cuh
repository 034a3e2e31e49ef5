// The weights and probabilities of the fused sampler (sampling.cu), shared with acceptance.cu so that
// acceptance recomputes the sampler's distribution exactly from a row's logits and its stats.
#pragma once
#include "common.cuh"

// The block sample_f32 and accept_sampled run per row: every sum's order depends on it, so it is fixed
// (FusedSampling.Threads in the C# references).
#define SAMPLE_THREADS 1024

// w = exp((x − max)·(1/T)); NaN and −∞ weigh 0.
static __device__ __forceinline__ float sample_weight(float x, float mx, float inv_temp) {
    return x == x ? expf((x - mx) * inv_temp) : 0.0f;
}

// p(i) of a row sample_f32 described by its stats (max, threshold, Z): exactly what its probs output holds.
static __device__ __forceinline__ float sample_prob(float x, const float * stats, float inv_temp) {
    const float w = sample_weight(x, stats[0], inv_temp);
    return w >= stats[1] ? w / stats[2] : 0.0f; // weights are ≥ 0, so value order is bit order
}

// The draw both kernels make: a token whose weight(i) ≥ 0 chosen with probability weight / Z, by
// inverting the cumulative sum at u·Z. Each of the block's 1024 threads sums a contiguous range of
// [0, n) left to right; a thread's prefix is its warp's earlier threads (left to right) after the
// earlier warps (in order); the thread whose interval holds u·Z walks its range. Every sum runs in
// that fixed order, so the draw is a function of the weights and u alone. Z (the total) goes to *z.
// Every thread must call it; s_base holds SAMPLE_THREADS + 1 floats, s_warp one per warp.
template <typename Weight>
static __device__ int block_draw(const Weight & weight, int n, float u, float * s_base, float * s_warp, int * s_choice, float * z_out) {
    const int per = (n + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
    const int lo = min(n, (int) threadIdx.x * per), hi = min(n, lo + per);
    float local = 0.0f;
    for (int i = lo; i < hi; i++) {
        local += weight(i);
    }
    s_base[threadIdx.x] = local;
    __syncthreads();
    const int lane = threadIdx.x % ENGINE_WARP_SIZE, warp = threadIdx.x / ENGINE_WARP_SIZE;
    float within = 0.0f; // the weight of the warp's earlier threads, summed left to right
    for (int t = warp * ENGINE_WARP_SIZE; t < (int) threadIdx.x; t++) {
        within += s_base[t];
    }
    if (lane == ENGINE_WARP_SIZE - 1) {
        s_warp[warp] = within + local;
    }
    __syncthreads();
    float before = 0.0f;
    for (int w = 0; w < warp; w++) {
        before += s_warp[w];
    }
    float z = 0.0f;
    for (int w = 0; w < SAMPLE_THREADS / ENGINE_WARP_SIZE; w++) {
        z += s_warp[w];
    }
    const float base = before + within;
    __syncthreads(); // every s_base read is done
    s_base[threadIdx.x] = base;
    if (threadIdx.x == 0) {
        s_base[SAMPLE_THREADS] = z;
        *s_choice = -1;
    }
    __syncthreads();
    const float target = u * z;
    const float next = s_base[threadIdx.x + 1];
    if (base < next && base <= target && (target < next || (next == z && target >= z))) {
        const float r = target - base;
        float acc = 0.0f;
        int chosen = -1;
        for (int i = lo; i < hi; i++) {
            const float w = weight(i);
            if (w > 0.0f) {
                acc += w;
                chosen = i;
                if (r < acc) {
                    break;
                }
            }
        }
        *s_choice = chosen; // one thread's interval holds the target
    }
    __syncthreads();
    const int chosen = *s_choice;
    __syncthreads(); // s_choice may be reused by the caller
    *z_out = z;
    return chosen;
}
