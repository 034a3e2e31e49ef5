// Mixture of experts: the weighted sum of the experts' outputs.
// CPU reference: engine/Backends/Cpu/Kernels/Activations.cs (Activations.MoeCombineF32).
// Launcher:      managed/Kernels/Moe.cs.
#include "common.cuh"

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
