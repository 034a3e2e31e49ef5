// Host stand-in for <mma.h> (nvcuda::wmma), for the kernel emulator: the 16×16×16 binary16 shapes the
// kernels use. A fragment here holds the whole tile in every thread (on the device each thread holds a
// few elements in an unspecified order), so a kernel that touches fragments only through these calls —
// as a correct kernel must — computes the same products. Each thread of the warp runs every call, on
// the same data, so stores write the same values 32 times. mma_sync sums in float32, k ascending (the
// device's order is unspecified: the kernels' tests allow for it).
#pragma once
#include "cuda_fp16.h"

typedef __half half;

namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

// Elements in logical row-major order: a [m][k], b [k][n], accumulator [m][n].
template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
    static constexpr int num_elements = 256;
    T x[256];
};

template <int M, int N, int K, typename T, typename Layout>
static inline void fill_fragment(fragment<accumulator, M, N, K, T, Layout> & f, T v) {
    for (int i = 0; i < 256; i++) {
        f.x[i] = v;
    }
}

static inline void load_matrix_sync(fragment<matrix_a, 16, 16, 16, half, row_major> & f, const half * p, unsigned ldm) {
    for (int m = 0; m < 16; m++)
        for (int k = 0; k < 16; k++) f.x[m * 16 + k] = p[m * ldm + k];
}

static inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, half, row_major> & f, const half * p, unsigned ldm) {
    for (int k = 0; k < 16; k++)
        for (int n = 0; n < 16; n++) f.x[k * 16 + n] = p[k * ldm + n];
}

static inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, half, col_major> & f, const half * p, unsigned ldm) {
    for (int k = 0; k < 16; k++)
        for (int n = 0; n < 16; n++) f.x[k * 16 + n] = p[n * ldm + k];
}

static inline void store_matrix_sync(float * p, const fragment<accumulator, 16, 16, 16, float> & f, unsigned ldm, layout_t layout) {
    for (int m = 0; m < 16; m++)
        for (int n = 0; n < 16; n++) {
            if (layout == mem_row_major) {
                p[m * ldm + n] = f.x[m * 16 + n];
            } else {
                p[n * ldm + m] = f.x[m * 16 + n];
            }
        }
}

template <typename LayoutB>
static inline void mma_sync(fragment<accumulator, 16, 16, 16, float> & d, const fragment<matrix_a, 16, 16, 16, half, row_major> & a,
                            const fragment<matrix_b, 16, 16, 16, half, LayoutB> & b, const fragment<accumulator, 16, 16, 16, float> & c) {
    float out[256];
    for (int m = 0; m < 16; m++)
        for (int n = 0; n < 16; n++) {
            float s = c.x[m * 16 + n];
            for (int k = 0; k < 16; k++) s += __half2float(a.x[m * 16 + k]) * __half2float(b.x[k * 16 + n]);
            out[m * 16 + n] = s;
        }
    for (int i = 0; i < 256; i++) d.x[i] = out[i];
}
} // namespace wmma
} // namespace nvcuda
