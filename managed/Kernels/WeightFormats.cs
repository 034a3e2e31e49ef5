using Engine.Tensors;

namespace Engine.Cuda.Kernels;

/// <summary>
/// The weight formats kernels/quant.cuh reads, with the suffix of their kernels (<c>gemv_q4_0</c>,
/// <c>get_rows_q4_0</c>, <c>dequantize_q4_0_f16</c>) and the number of values a row must divide into.
/// </summary>
public static class WeightFormats
{
    /// <summary>The types with CUDA kernels; others are converted to F16 when uploaded.</summary>
    public static IReadOnlyList<GgmlType> Supported { get; } =
        [GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_K, GgmlType.Q6_K];

    public static bool IsSupported(GgmlType type) => Supported.Contains(type);

    /// <summary>Kernel name suffix of a supported type.</summary>
    public static string Suffix(GgmlType type) => type switch
    {
        GgmlType.F32 => "f32",
        GgmlType.F16 => "f16",
        GgmlType.BF16 => "bf16",
        GgmlType.Q8_0 => "q8_0",
        GgmlType.Q4_0 => "q4_0",
        GgmlType.Q4_K => "q4_k",
        GgmlType.Q6_K => "q6_k",
        _ => throw new NotSupportedException($"{type} weights have no CUDA kernels (supported: {string.Join(", ", Supported)})"),
    };

    /// <summary>Values per block as quant.cuh reads the type (F16/BF16 eight at a time): a row's length must be a multiple.</summary>
    public static int ValuesPerBlock(GgmlType type) => type switch
    {
        GgmlType.F32 => 1,
        GgmlType.F16 or GgmlType.BF16 => 8,
        GgmlType.Q8_0 or GgmlType.Q4_0 => 32,
        GgmlType.Q4_K or GgmlType.Q6_K => 256,
        _ => throw new NotSupportedException($"{type} weights have no CUDA kernels"),
    };

    /// <summary>Checks that [rows, cols] of <paramref name="type"/> fits the kernels and <paramref name="bytes"/>; returns the row size in bytes.</summary>
    public static long CheckMatrix(string kernel, GgmlType type, int rows, int cols, long bytes)
    {
        if (rows <= 0 || cols <= 0)
            throw new ArgumentOutOfRangeException(nameof(rows), $"{kernel}: shape [{rows}, {cols}] must be positive");
        int qk = ValuesPerBlock(type);
        if (cols % qk != 0)
            throw new ArgumentException($"{kernel}: a {type} row of {cols} values is not a whole number of {qk}-value blocks");
        long rowBytes = GgmlTypeInfo.RowBytes(type, cols);
        if (bytes < rowBytes * rows)
            throw new ArgumentException($"{kernel}: {type} [{rows}, {cols}] needs {rowBytes * rows} bytes, the weights hold {bytes}");
        return rowBytes;
    }
}
