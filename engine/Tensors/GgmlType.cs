namespace Engine.Tensors;

/// <summary>
/// Tensor element types with the numeric ids GGUF stores (ggml's <c>enum ggml_type</c>). Only the
/// ids matter for the file format; which of them the engine can compute with is in <see cref="GgmlTypeInfo"/>.
/// </summary>
public enum GgmlType : uint
{
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
}

/// <summary>Block layout of each <see cref="GgmlType"/>: elements per block and bytes per block.</summary>
public static class GgmlTypeInfo
{
    /// <summary>Elements per super-block of the k-quants (ggml's QK_K).</summary>
    public const int QK_K = 256;

    /// <summary>Elements per block of the legacy quants (QK4_0, QK8_0, ...).</summary>
    public const int QK = 32;

    /// <summary>
    /// (elements per block, bytes per block) for every type the engine can read, or null for a type id
    /// that is unknown or not supported (IQ quants, Q8_1/Q8_K which are activation-only types).
    /// </summary>
    public static (int BlockSize, int TypeSize)? Layout(GgmlType type) => type switch
    {
        GgmlType.F32 => (1, 4),
        GgmlType.F16 => (1, 2),
        GgmlType.BF16 => (1, 2),
        GgmlType.F64 => (1, 8),
        GgmlType.I8 => (1, 1),
        GgmlType.I16 => (1, 2),
        GgmlType.I32 => (1, 4),
        GgmlType.I64 => (1, 8),
        GgmlType.Q4_0 => (QK, 2 + QK / 2),              // d, qs[16]
        GgmlType.Q4_1 => (QK, 2 + 2 + QK / 2),          // d, m, qs[16]
        GgmlType.Q5_0 => (QK, 2 + 4 + QK / 2),          // d, qh[4], qs[16]
        GgmlType.Q5_1 => (QK, 2 + 2 + 4 + QK / 2),      // d, m, qh[4], qs[16]
        GgmlType.Q8_0 => (QK, 2 + QK),                  // d, qs[32]
        GgmlType.Q2_K => (QK_K, QK_K / 16 + QK_K / 4 + 2 + 2),          // scales[16], qs[64], d, dmin = 84
        GgmlType.Q3_K => (QK_K, QK_K / 8 + QK_K / 4 + 12 + 2),          // hmask[32], qs[64], scales[12], d = 110
        GgmlType.Q4_K => (QK_K, 2 + 2 + 12 + QK_K / 2),                 // d, dmin, scales[12], qs[128] = 144
        GgmlType.Q5_K => (QK_K, 2 + 2 + 12 + QK_K / 8 + QK_K / 2),      // d, dmin, scales[12], qh[32], qs[128] = 176
        GgmlType.Q6_K => (QK_K, QK_K / 2 + QK_K / 4 + QK_K / 16 + 2),   // ql[128], qh[64], scales[16], d = 210
        _ => null,
    };

    /// <summary>True for the float and quantized types a weight matrix may use.</summary>
    public static bool IsWeightType(GgmlType type) => type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16
        or GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1 or GgmlType.Q8_0
        or GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K;

    /// <summary>Bytes taken by a row of <paramref name="elements"/> values; the count must be a whole number of blocks.</summary>
    public static long RowBytes(GgmlType type, long elements)
    {
        var layout = Layout(type) ?? throw new NotSupportedException($"tensor type {type} is not supported");
        if (elements % layout.BlockSize != 0)
            throw new ArgumentException($"{elements} elements are not a whole number of {type} blocks of {layout.BlockSize}");
        return elements / layout.BlockSize * layout.TypeSize;
    }
}
