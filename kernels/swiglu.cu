// SwiGLU (Shazeer, "GLU Variants Improve Transformer", 2020): dst = silu(gate) · up, silu(g) = g·σ(g).
// CPU reference: engine/Backends/Cpu/Kernels/Activations.cs (Activations.SwiGluF32).
// Launcher:      managed/Kernels/SwiGlu.cs.
#include "common.cuh"

// swiglu_f32
//   gate, up, dst: [count] float32 (dst may alias gate or up: each element is read, then written by one thread)
// Launch: grid = (ceil(count / 256), 1, 1); block = (256, 1, 1).
extern "C" __global__ void swiglu_f32(const float * gate, const float * up, float * dst, long long count) {
    const long long i = (long long) blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) {
        dst[i] = silu_mul(gate[i], up[i]);
    }
}
