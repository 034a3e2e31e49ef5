// Mixture of experts: the weighted sum of the experts' outputs.
// CPU reference: engine/Backends/Cpu/Kernels/Activations.cs (Activations.MoeCombineF32).
// Launcher:      managed/Kernels/Moe.cs.
#include "common.cuh"
#include "quant.cuh"

// moe_combine_f32: dst[t, c] = Σ_{j<k} weights[t·k + j] · src[slots[t·k + j], c] for row t = blockIdx.x,
// summed in j order from zero with each product rounded before the add (no FMA contraction), as the CPU
// reference does: a token's output is the same bits on every backend and in every batch.
// Launch: grid = (rows, 1, 1); block = (256, 1, 1).
extern "C" __global__ void moe_combine_f32(float * dst, const float * __restrict__ src, const int * __restrict__ slots,
                                           const float * __restrict__ weights, int k, int cols) {
    const int t = blockIdx.x;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float sum = 0.0f;
        for (int j = 0; j < k; j++) {
            const float w = weights[t * k + j];
            sum = __fadd_rn(sum, __fmul_rn(w, src[(long long) slots[t * k + j] * cols + c]));
        }
        dst[(long long) t * cols + c] = sum;
    }
}

// ---- The routed experts on the device: no logits cross to the host (decoding and verification) ----
//
// moe_route_f32 picks each row's experts, gemv_<type>_moe_glu runs every chosen expert's gate and up
// rows, gemv_<type>_moe_down every chosen expert's down rows with the weighted sum in the same warp (the
// epilogue moe_combine_f32 would be). Expert e's matrix of a stack [experts·rows, cols] starts at byte
// e·expert_bytes. Every row product is dot_row, and the sum adds a token's experts in rank order with
// separately rounded products, as moe_combine_f32 does: a token gets the same bits in any batch.

#include "dot_row.cuh"

// moe_route_f32: for row t = blockIdx.x of logits [n, experts], the k experts of highest logit (the
// lower index first among equals), in that order, and their weights: softmax over all experts, or over
// the chosen ones when normalize (Mixtral, Qwen3-MoE). The choice is k passes over the experts by one
// thread (experts ≤ a few hundred, k ≤ 8: a few microseconds, and no order to argue about).
// Launch: grid = (n, 1, 1); block = (128, 1, 1).
extern "C" __global__ void moe_route_f32(const float * __restrict__ logits, int experts, int k, int normalize, int * __restrict__ chosen,
                                         float * __restrict__ weights) {
    const int t = blockIdx.x;
    const float * row = logits + (long long) t * experts;
    float m = -INFINITY;
    for (int e = threadIdx.x; e < experts; e += blockDim.x) {
        m = fmaxf(m, row[e]);
    }
    m = block_reduce_max(m);
    float total = 0.0f;
    for (int e = threadIdx.x; e < experts; e += blockDim.x) {
        total += expf(row[e] - m);
    }
    total = block_reduce_sum(total);
    if (threadIdx.x != 0) {
        return;
    }
    int * mine = chosen + (long long) t * k;
    float * w = weights + (long long) t * k;
    float picked = 0.0f;
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int e = 0; e < experts; e++) {
            bool taken = false;
            for (int i = 0; i < j; i++) {
                taken |= mine[i] == e;
            }
            if (!taken && (best < 0 || row[e] > row[best])) {
                best = e;
            }
        }
        mine[j] = best;
        w[j] = expf(row[best] - m);
        picked += w[j];
    }
    const float norm = normalize ? picked : total;
    for (int j = 0; j < k; j++) {
        w[j] /= norm;
    }
}

// gemv_<type>_moe_glu: h[p, r] = silu(gate_e[r]·x[t])·(up_e[r]·x[t]) for each (token t, rank j) pair
// p = t·k + j = blockIdx.y, e = chosen[p].     gate, up: stacks [experts·rows, cols]     h: [n·k, rows]
// Launch: grid = (ceil(rows / 4), n·k, 1); block = (128, 1, 1): warp w of block b takes row 4b + w.
template <typename T>
static __device__ void gemv_moe_glu(const uint8_t * __restrict__ gate, const uint8_t * __restrict__ up, long long expert_bytes, long long row_bytes,
                                    const float * __restrict__ x, int cols, const int * __restrict__ chosen, int k, float * __restrict__ h, int rows) {
    const int r = blockIdx.x * 4 + threadIdx.x / ENGINE_WARP_SIZE;
    if (r >= rows) {
        return;
    }
    const int p = blockIdx.y, t = p / k;
    const long long at = chosen[p] * expert_bytes + (long long) r * row_bytes;
    float g[1], u[1];
    dot_row<T, 1>(gate + at, x + (long long) t * cols, cols, 1, g);
    dot_row<T, 1>(up + at, x + (long long) t * cols, cols, 1, u);
    if (threadIdx.x % ENGINE_WARP_SIZE == 0) {
        h[(long long) p * rows + r] = silu_mul(g[0], u[0]);
    }
}

// gemv_<type>_moe_down: y[t, r] = Σ_j weights[t·k + j] · (down_e[r]·h[t·k + j]), j in rank order.
//   down: stack [experts·dim, ffn]     h: [n·k, ffn]     y: [n, dim]
// Launch: grid = (ceil(dim / 4), n, 1); block = (128, 1, 1).
template <typename T>
static __device__ void gemv_moe_down(const uint8_t * __restrict__ down, long long expert_bytes, long long row_bytes, const float * __restrict__ h,
                                     int ffn, const int * __restrict__ chosen, const float * __restrict__ weights, int k, float * __restrict__ y,
                                     int dim) {
    const int r = blockIdx.x * 4 + threadIdx.x / ENGINE_WARP_SIZE;
    if (r >= dim) {
        return;
    }
    const int t = blockIdx.y;
    float sum = 0.0f;
    for (int j = 0; j < k; j++) {
        const int p = t * k + j;
        float s[1];
        dot_row<T, 1>(down + chosen[p] * expert_bytes + (long long) r * row_bytes, h + (long long) p * ffn, ffn, 1, s);
        sum = __fadd_rn(sum, __fmul_rn(weights[p], s[0]));
    }
    if (threadIdx.x % ENGINE_WARP_SIZE == 0) {
        y[(long long) t * dim + r] = sum;
    }
}

#define MOE_GEMV(name, type)                                                                                              \
    extern "C" __global__ void __launch_bounds__(128) gemv_##name##_moe_glu(const uint8_t * gate, const uint8_t * up,        \
            long long expert_bytes, long long row_bytes, const float * x, int cols, const int * chosen, int k, float * h, int rows) { \
        gemv_moe_glu<type>(gate, up, expert_bytes, row_bytes, x, cols, chosen, k, h, rows);                                \
    }                                                                                                                     \
    extern "C" __global__ void __launch_bounds__(128) gemv_##name##_moe_down(const uint8_t * down, long long expert_bytes,   \
            long long row_bytes, const float * h, int ffn, const int * chosen, const float * weights, int k, float * y, int dim) { \
        gemv_moe_down<type>(down, expert_bytes, row_bytes, h, ffn, chosen, weights, k, y, dim);                            \
    }
ENGINE_FOR_EACH_WEIGHT_TYPE(MOE_GEMV)

// moe_add_gated_f32: y[t, c] += sigmoid(gate[t])·s[t, c] — Qwen2-MoE's shared expert after the routed ones
// (the last term moe_combine_f32 adds, rounded as it rounds).
// Launch: grid = (n, 1, 1); block = (256, 1, 1).
extern "C" __global__ void moe_add_gated_f32(float * y, const float * __restrict__ s, const float * __restrict__ gate, int cols) {
    const int t = blockIdx.x;
    const float w = 1.0f / (1.0f + expf(-gate[t]));
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        y[(long long) t * cols + c] = __fadd_rn(y[(long long) t * cols + c], __fmul_rn(w, s[(long long) t * cols + c]));
    }
}
