// Matrix-vector products for decoding: y = x·Wᵀ with W [rows, cols] in its GGUF block format and a
// few activation rows x [ncols, cols] (one token, or a short speculative draft). Decoding reads every
// weight once per token, so these kernels are bound by memory bandwidth: one warp streams one weight
// row, each lane reading whole chunks of blocks (quant.cuh) in order, so a warp's loads cover
// consecutive bytes; the activations come from L1/L2, shared by the warps of a block.
// CPU reference: engine/Backends/Cpu/Kernels/Gemv.cs (Gemv.GemvQ4_0, ...).
// Launcher:      managed/Kernels/Gemv.cs.
#include "common.cuh"
#include "quant.cuh"

#define GEMV_WARPS 4

// gemv_<type> (MAXC = 1) and gemv_<type>_x8 (MAXC = 8)
//   w: [rows, cols] in <type>'s block format, row_bytes bytes per row (cols a multiple of the type's QK)
//   x: [ncols, cols] float32      y: [ncols, rows] float32      1 <= ncols <= MAXC
// Launch: grid = (ceil(rows / 4), 1, 1); block = (128, 1, 1): warp k of block b computes row 4b + k
//         for every activation row; no shared memory.
template <typename T, int MAXC>
static __device__ void gemv(const uint8_t * __restrict__ w, long long row_bytes, const float * __restrict__ x,
                            float * __restrict__ y, int rows, int cols, int ncols) {
    const int lane = threadIdx.x % ENGINE_WARP_SIZE;
    const int row = blockIdx.x * GEMV_WARPS + threadIdx.x / ENGINE_WARP_SIZE;
    if (row >= rows) {
        return; // whole warps leave together; no block-wide synchronization follows
    }
    const uint8_t * wr = w + (long long) row * row_bytes;
    const int chunks = cols / T::QK * T::CHUNKS;
    float sum[MAXC];
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
#pragma unroll
                for (int i = 0; i < T::VALS; i++) {
                    sum[c] = fmaf(v[i], __ldg(xb + (long long) c * cols + T::pos(part, i)), sum[c]);
                }
            }
        }
    }
#pragma unroll
    for (int c = 0; c < MAXC; c++) {
        if (c < ncols) {
            const float s = warp_reduce_sum(sum[c]);
            if (lane == 0) {
                y[(long long) c * rows + row] = s;
            }
        }
    }
}

#define GEMV(name, type)                                                                                    \
    extern "C" __global__ void __launch_bounds__(128) gemv_##name(const uint8_t * w, long long row_bytes,   \
            const float * x, float * y, int rows, int cols, int ncols) {                                    \
        gemv<type, 1>(w, row_bytes, x, y, rows, cols, ncols);                                               \
    }                                                                                                       \
    extern "C" __global__ void __launch_bounds__(128) gemv_##name##_x8(const uint8_t * w, long long row_bytes, \
            const float * x, float * y, int rows, int cols, int ncols) {                                    \
        gemv<type, 8>(w, row_bytes, x, y, rows, cols, ncols);                                               \
    }
ENGINE_FOR_EACH_WEIGHT_TYPE(GEMV)
