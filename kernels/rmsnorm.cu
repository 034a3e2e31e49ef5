// RMSNorm (Zhang & Sennrich, 2019): y = x / sqrt(mean(x^2) + eps) * w, row by row.
// CPU reference: engine/Backends/Cpu/Kernels/RmsNorm.cs (RmsNorm.RmsNormF32).
// Launcher:      managed/Kernels/RmsNorm.cs.
#include "common.cuh"

// rms_norm_f32
//   x: [rows, cols] float32, row-major      w: [cols] float32      y: [rows, cols] float32
//   y may alias x (each element is read and then written by the same thread, after the reduction).
// Launch: grid = (rows, 1, 1), one block per row; block = (T, 1, 1) with T a multiple of 32, <= 1024
//         (the launcher uses min(1024, round_up(cols, 32))); no dynamic shared memory.
extern "C" __global__ void rms_norm_f32(const float * x, const float * __restrict__ w, float * y, int cols, float eps) {
    const long long row = blockIdx.x;
    const float * xr = x + row * cols;
    float * yr = y + row * cols;

    float sum = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        const float v = xr[i];
        sum += v * v;
    }
    sum = block_reduce_sum(sum);

    const float scale = rsqrtf(sum / cols + eps);
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        yr[i] = xr[i] * scale * w[i];
    }
}
