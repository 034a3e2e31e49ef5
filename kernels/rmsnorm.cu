// RMSNorm (Zhang & Sennrich, 2019): y = x / sqrt(mean(x^2) + eps) * w, row by row.
// CPU reference: engine/Backends/Cpu/Kernels/RmsNorm.cs (RmsNorm.RmsNormF32).
// Launcher:      managed/Kernels/RmsNorm.cs.
#include "common.cuh"

// rms_norm_f32
//   x: [rows, cols] float32, row-major      w: [cols] float32      y: [rows, cols] float32
//   y may alias x (each element is read and then written by the same thread, after the reduction).
// Launch: grid = (rows, 1, 1), one block per row; block = (RMS_NORM_THREADS, 1, 1) — the thread count
//         fixes the order of the sum, which the GEMV's folded norm (gemv.cu) repeats.
extern "C" __global__ void __launch_bounds__(RMS_NORM_THREADS) rms_norm_f32(const float * x, const float * __restrict__ w, float * y, int cols,
                                                                            float eps) {
    const long long row = blockIdx.x;
    rms_norm_row(x + row * cols, w, y + row * cols, cols, eps, [](const float * p) { return *p; });
}
