// Matrix-vector products for decoding: y = x·Wᵀ with W [rows, cols] in its GGUF block format and a
// few activation rows x [ncols, cols] (one token, or a short speculative draft). Decoding reads every
// weight once per token, so these kernels are bound by memory bandwidth: one warp streams one weight
// row, each lane reading whole chunks of blocks (quant.cuh) in order, so a warp's loads cover
// consecutive bytes; the activations come from L1/L2, shared by the warps of a block.
//
// A decode step of a small model is bound by launches as much as by bytes, so the products of a layer
// carry the small steps around them (fewer launches per layer, the same arithmetic):
//   - up to three matrices that share the input in one launch (q, k and v), each with its bias;
//   - the residual add in the epilogue (y += x·Wᵀ: the attention output and down projections);
//   - the next RMSNorm of the residual in the epilogue: the last block to finish normalizes the rows
//     (rms_norm_row, the arithmetic of rms_norm_f32) — one launch instead of three;
//   - gemv_<type>_glu: the gate and up projections by the same warp, SwiGLU applied as they leave.
// Every row's dot product is the same loop in every variant (dot_row), so a row's result does not
// depend on which variant computed it, nor on the other rows of the launch.
// CPU reference: engine/Backends/Cpu/Kernels/Gemv.cs (Gemv.GemvQ4_0, ...); the fused variants are the
// compositions Backend.MatMulAddNorm and Backend.GatedFfn spell out (engine/Backends/Backend.cs).
// Launcher:      managed/Kernels/Gemv.cs.
#include "common.cuh"
#include "quant.cuh"
#include "dot_row.cuh"

#define GEMV_WARPS 4
#define GEMV_THREADS (GEMV_WARPS * ENGINE_WARP_SIZE)
#define GEMV_MAX_TARGETS 3

// Up to three matrices of one type and width that multiply the same input; the launch's rows are
// target 0's, then target 1's, then target 2's.
struct gemv_targets {
    const uint8_t * w[GEMV_MAX_TARGETS];
    const float * bias[GEMV_MAX_TARGETS]; // [rows] added to each product, or null
    float * y[GEMV_MAX_TARGETS];          // [ncols, rows]
    int rows[GEMV_MAX_TARGETS];
    int count;                            // 1..3
    long long row_bytes;                  // bytes per weight row (the same for all: same type and cols)
};

// What happens as the products leave.
struct gemv_epilogue {
    int accumulate;       // 1: y += scale·(x·Wᵀ) (a residual add) instead of y = x·Wᵀ
    float scale;          // the residual's multiplier (Granite's; 1 elsewhere, which changes no bit)
    const float * norm_w; // non-null (one target): then norm_out = rmsnorm(y)·norm_w, row by row, once all of y is written
    float * norm_out;     // [ncols, rows]
    float eps;
    unsigned * counter;   // blocks done; zero before the launch, left zero after it
};

// gemv_<type> (MAXC = 1) and gemv_<type>_x8 (MAXC = 8)
//   t: the targets (w [rows_i, cols] in <type>'s block format, cols a multiple of the type's QK)
//   x: [ncols, cols] float32, 16-byte aligned rows (read as float4)      1 <= ncols <= MAXC      e: the epilogue
// Launch: grid = (ceil(Σ rows_i / 4), 1, 1); block = (128, 1, 1): warp k of block b computes row 4b + k
//         of the concatenated targets for every activation row; no dynamic shared memory.
template <typename T, int MAXC>
static __device__ void gemv(const gemv_targets & t, const float * __restrict__ x, int cols, int ncols, const gemv_epilogue & e) {
    const int lane = threadIdx.x % ENGINE_WARP_SIZE;
    int row = blockIdx.x * GEMV_WARPS + threadIdx.x / ENGINE_WARP_SIZE;
    int target = 0;
    while (target < t.count && row >= t.rows[target]) {
        row -= t.rows[target];
        target++;
    }
    if (target < t.count) { // warps past the last row skip the work but stay for the epilogue's barriers
        float sum[MAXC];
        dot_row<T, MAXC>(t.w[target] + (long long) row * t.row_bytes, x, cols, ncols, sum);
        const int rows = t.rows[target];
        float * y = t.y[target];
        const float bias = t.bias[target] != nullptr ? t.bias[target][row] : 0.0f;
#pragma unroll
        for (int c = 0; c < MAXC; c++) {
            if (c < ncols && lane == 0) {
                float * out = y + (long long) c * rows + row;
                // The same additions add_bias_f32 and add_f32 make after a plain product.
                float s = sum[c];
                if (t.bias[target] != nullptr) {
                    s += bias;
                }
                *out = e.accumulate ? *out + __fmul_rn(e.scale, s) : s; // scale_f32's product, then add_f32's sum
            }
        }
    }
    if (e.norm_w == nullptr) {
        return;
    }
    // The folded RMSNorm: the last block to finish normalizes every row of y. Each writer's fence makes
    // its products visible device-wide before the block takes its ticket (the threadFenceReduction
    // pattern); the last block reads y past L1 (__ldcg), which may hold lines other blocks rewrote.
    __shared__ int s_last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        s_last = atomicAdd(e.counter, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (!s_last) {
        return;
    }
    const int rows = t.rows[0];
    for (int c = 0; c < ncols; c++) {
        rms_norm_row(t.y[0] + (long long) c * rows, e.norm_w, e.norm_out + (long long) c * rows, rows, e.eps,
                     [](const float * p) { return __ldcg(p); });
    }
    if (threadIdx.x == 0) {
        *e.counter = 0; // ready for the next launch (and for a graph's next replay)
    }
}

// gemv_<type>_glu (MAXC = 1) and gemv_<type>_glu_x8 (MAXC = 8): y[c, r] = silu(gate_r·x_c)·(up_r·x_c)
//   gate, up: [rows, cols] in <type>'s block format      x: [ncols, cols]      y: [ncols, rows]
// Launch: grid = (ceil(rows / 4), 1, 1); block = (128, 1, 1): warp k of block b computes row 4b + k of
//         both matrices.
template <typename T, int MAXC>
static __device__ void gemv_glu(const uint8_t * __restrict__ gate, const uint8_t * __restrict__ up, long long row_bytes,
                                const float * __restrict__ x, float * __restrict__ y, int rows, int cols, int ncols) {
    const int lane = threadIdx.x % ENGINE_WARP_SIZE;
    const int row = blockIdx.x * GEMV_WARPS + threadIdx.x / ENGINE_WARP_SIZE;
    if (row >= rows) {
        return;
    }
    float g[MAXC], u[MAXC];
    dot_row<T, MAXC>(gate + (long long) row * row_bytes, x, cols, ncols, g);
    dot_row<T, MAXC>(up + (long long) row * row_bytes, x, cols, ncols, u);
#pragma unroll
    for (int c = 0; c < MAXC; c++) {
        if (c < ncols && lane == 0) {
            y[(long long) c * rows + row] = silu_mul(g[c], u[c]);
        }
    }
}

#define GEMV(name, type)                                                                                          \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv_##name(gemv_targets t, const float * x, int cols,   \
                                                                          int ncols, gemv_epilogue e) {          \
        gemv<type, 1>(t, x, cols, ncols, e);                                                                      \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv_##name##_x8(gemv_targets t, const float * x, int cols, \
                                                                               int ncols, gemv_epilogue e) {     \
        gemv<type, 8>(t, x, cols, ncols, e);                                                                      \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv_##name##_glu(const uint8_t * gate, const uint8_t * up, \
            long long row_bytes, const float * x, float * y, int rows, int cols, int ncols) {                     \
        gemv_glu<type, 1>(gate, up, row_bytes, x, y, rows, cols, ncols);                                          \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv_##name##_glu_x8(const uint8_t * gate, const uint8_t * up, \
            long long row_bytes, const float * x, float * y, int rows, int cols, int ncols) {                     \
        gemv_glu<type, 8>(gate, up, row_bytes, x, y, rows, cols, ncols);                                          \
    }
ENGINE_FOR_EACH_WEIGHT_TYPE(GEMV)
