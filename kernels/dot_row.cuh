// dot_row: one weight row against a few activation rows, reduced over the warp — the one loop every
// matrix-vector kernel runs (gemv.cu, moe.cu, chunk_sparse_ffn.cu), so that a row's product has the same
// bits whichever kernel computed it and whatever else shared the launch.
#pragma once
#include "common.cuh"
#include "quant.cuh"

// Σ_k W[row, k]·x[c, k] for the launch's activation rows c < ncols, reduced over the warp (every lane
// gets the sums). The one loop every variant runs.
template <typename T, int MAXC>
static __device__ __forceinline__ void dot_row(const uint8_t * __restrict__ wr, const float * __restrict__ x, int cols, int ncols, float (&sum)[MAXC]) {
    const int lane = threadIdx.x % ENGINE_WARP_SIZE;
    const int chunks = cols / T::QK * T::CHUNKS;
#pragma unroll
    for (int c = 0; c < MAXC; c++) {
        sum[c] = 0.0f;
    }
#pragma unroll 2
    for (int k = lane; k < chunks; k += ENGINE_WARP_SIZE) {
        const int blk = k / T::CHUNKS, part = k % T::CHUNKS;
        float v[T::VALS];
        T::load(wr + (long long) blk * T::BYTES, part, v);
        const float * xb = x + blk * T::QK;
#pragma unroll
        for (int c = 0; c < MAXC; c++) {
            if (c < ncols) {
                float xv[T::VALS];
                T::load_x(xb + (long long) c * cols, part, xv); // vector loads: xv[i] = x[c, pos(part, i)]
#pragma unroll
                for (int i = 0; i < T::VALS; i++) {
                    sum[c] = fmaf(v[i], xv[i], sum[c]);
                }
            }
        }
    }
#pragma unroll
    for (int c = 0; c < MAXC; c++) {
        sum[c] = warp_reduce_sum(sum[c]);
    }
}

