// kernels/quant.cuh compiled for the host: the block-format decoders every weight kernel uses (their
// chunk loads and value positions), run on the CPU so that CI checks them against the C# dequantizer
// without a GPU (tests/Engine.Tests/QuantHostTests.cs). Built by CMakeLists.txt as a test-only library;
// the engine never loads it.
#include "../quant.cuh"

#if defined(_WIN32)
#define ENGINE_EXPORT extern "C" __declspec(dllexport)
#else
#define ENGINE_EXPORT extern "C" __attribute__((visibility("default")))
#endif

// Decodes one row of `cols` values the way get_rows_<type> does, chunk by chunk.
template <typename T>
static void decode(const uint8_t * row, int cols, float * out) {
    for_each_value<T>(row, cols, 0, 1, [=](int i, float v) { out[i] = v; });
}

// type: the GGUF type id (GgmlType). Returns 0, or -1 for a type quant.cuh does not read.
ENGINE_EXPORT int engine_quant_decode_row(int type, const uint8_t * row, int cols, float * out) {
    switch (type) {
        case 0: decode<type_f32>(row, cols, out); return 0;
        case 1: decode<type_f16>(row, cols, out); return 0;
        case 30: decode<type_bf16>(row, cols, out); return 0;
        case 8: decode<type_q8_0>(row, cols, out); return 0;
        case 2: decode<type_q4_0>(row, cols, out); return 0;
        case 12: decode<type_q4_k>(row, cols, out); return 0;
        case 14: decode<type_q6_k>(row, cols, out); return 0;
        default: return -1;
    }
}
