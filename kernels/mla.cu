// Multi-head latent attention's rearrangements (DeepSeek-V2's MLA as MiniCPM/BlockFFN use it): each head's
// rotated part first, so that RoPE's leading-dims rotation applies, and values padded to the key width.
// CPU reference: engine/Backends/Cpu/Kernels/Mla.cs (Mla.AssembleF32, Mla.CompactF32) — plain copies, the same bits.
// Launcher:      managed/Kernels/Mla.cs.
#include "common.cuh"

// mla_assemble_f32: for row t = blockIdx.x and every head h:
//   q[t, h] = [q_pe | q_nope] from q_raw[t, h] = [q_nope | q_pe];   k[t, h] = [k_pe[t] | k_nope];   v[t, h] = [v | 0]
//   with kv_b[t, h] = [k_nope | v].
// Launch: grid = (rows, 1, 1); block = (128, 1, 1).
extern "C" __global__ void mla_assemble_f32(const float * __restrict__ q_raw, const float * __restrict__ k_rope, const float * __restrict__ kv_b,
                                            int heads, int nope, int rope, int vdim, float * __restrict__ q, float * __restrict__ k,
                                            float * __restrict__ v) {
    const int t = blockIdx.x, width = nope + rope, kv = nope + vdim;
    for (int i = threadIdx.x; i < heads * width; i += blockDim.x) {
        const int h = i / width, d = i % width;
        const long long at = ((long long) t * heads + h) * width + d;
        const float * raw = q_raw + ((long long) t * heads + h) * width;
        const float * b = kv_b + ((long long) t * heads + h) * kv;
        q[at] = d < rope ? raw[nope + d] : raw[d - rope];
        k[at] = d < rope ? k_rope[(long long) t * rope + d] : b[d - rope];
        v[at] = d < vdim ? b[nope + d] : 0.0f;
    }
}

// mla_compact_f32: dst[t, h·vdim + i] = att[t, h·width + i] for i < vdim.
// Launch: grid = (rows, 1, 1); block = (128, 1, 1).
extern "C" __global__ void mla_compact_f32(const float * __restrict__ att, int heads, int width, int vdim, float * __restrict__ dst) {
    const int t = blockIdx.x;
    for (int i = threadIdx.x; i < heads * vdim; i += blockDim.x) {
        const int h = i / vdim, d = i % vdim;
        dst[(long long) t * heads * vdim + i] = att[((long long) t * heads + h) * width + d];
    }
}
