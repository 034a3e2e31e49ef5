// Gated linear units (Shazeer, "GLU Variants Improve Transformer", 2020): SwiGLU, dst = silu(gate) · up
// with silu(g) = g·σ(g) (Llama), and GeGLU, dst = gelu(gate) · up with the tanh-approximated GELU (Gemma).
// CPU reference: engine/Backends/Cpu/Kernels/Activations.cs (Activations.SwiGluF32, Activations.GeGluF32).
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

// geglu_f32: dst = gelu_tanh(gate) · up, arguments and launch as swiglu_f32.
extern "C" __global__ void geglu_f32(const float * gate, const float * up, float * dst, long long count) {
    const long long i = (long long) blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) {
        dst[i] = gelu_tanh(gate[i]) * up[i];
    }
}
