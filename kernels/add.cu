// Residual add, bias add, scaling and soft-capping.
// CPU reference: engine/Backends/Cpu/Kernels/Activations.cs (Activations.AddF32, Activations.AddBiasF32, Activations.ScaleF32,
// Activations.SoftCapF32).
// Launcher:      managed/Kernels/Add.cs.
#include "common.cuh"

// add_f32: dst[i] += src[i] for i < count.
// Launch: grid = (ceil(count / 256), 1, 1); block = (256, 1, 1).
extern "C" __global__ void add_f32(float * dst, const float * __restrict__ src, long long count) {
    const long long i = (long long) blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) {
        dst[i] += src[i];
    }
}

// scale_f32: x[i] = x[i]·s for i < count (rounded once: the same product the GEMV's scaled residual
// add forms before it adds).
// Launch: grid = (ceil(count / 256), 1, 1); block = (256, 1, 1).
extern "C" __global__ void scale_f32(float * x, float s, long long count) {
    const long long i = (long long) blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) {
        x[i] = __fmul_rn(x[i], s);
    }
}

// add_bias_f32: x[r, c] += bias[c] for x [rows, cols] (count = rows·cols).
// Launch: grid = (ceil(count / 256), 1, 1); block = (256, 1, 1).
extern "C" __global__ void add_bias_f32(float * x, const float * __restrict__ bias, int cols, long long count) {
    const long long i = (long long) blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) {
        x[i] += bias[i % cols];
    }
}

// soft_cap_f32: x[i] = cap · tanh(x[i] / cap) for i < count (Gemma 2's final logits).
// Launch: grid = (ceil(count / 256), 1, 1); block = (256, 1, 1).
extern "C" __global__ void soft_cap_f32(float * x, float cap, long long count) {
    const long long i = (long long) blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) {
        x[i] = cap * tanhf(x[i] / cap);
    }
}
