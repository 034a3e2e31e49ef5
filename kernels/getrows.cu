// Row gather: the token-embedding lookup (weights in any format) and the gather of activation rows
// before the LM head (get_rows_f32 on float32 activations).
// CPU reference: engine/Backends/Cpu/Kernels/GetRows.cs (GetRows.GetRowsQ4_0, ...).
// Launcher:      managed/Kernels/GetRows.cs.
#include "common.cuh"
#include "quant.cuh"

// get_rows_<type>
//   table: [table_rows, cols] in <type>'s block format, row_bytes bytes per row
//   ids:   [n] int32 row indices (checked by the launcher's caller: 0 <= ids[i] < table_rows)
//   dst:   [n, cols] float32
// Launch: grid = (n, 1, 1), one block per output row; block = (128, 1, 1); no shared memory.
template <typename T>
static __device__ void get_rows(const uint8_t * __restrict__ table, long long row_bytes, const int * __restrict__ ids,
                                float * __restrict__ dst, int cols) {
    const int r = blockIdx.x;
    float * out = dst + (long long) r * cols;
    for_each_value<T>(table + (long long) ids[r] * row_bytes, cols, threadIdx.x, blockDim.x, [=](int i, float v) { out[i] = v; });
}

#define GET_ROWS(name, type)                                                                             \
    extern "C" __global__ void get_rows_##name(const uint8_t * table, long long row_bytes, const int * ids, \
                                               float * dst, int cols) {                                 \
        get_rows<type>(table, row_bytes, ids, dst, cols);                                               \
    }
ENGINE_FOR_EACH_WEIGHT_TYPE(GET_ROWS)
