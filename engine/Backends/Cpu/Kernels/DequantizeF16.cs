using Engine.Tensors;

namespace Engine.Backends.Cpu.Kernels;

/// <summary>
/// Weights to F16 (round to nearest even) for half-precision matrix products — CPU reference of
/// <c>dequantize_&lt;type&gt;_f16</c> and <c>convert_f32_f16</c> in kernels/dequantize.cu.
/// </summary>
public static class DequantizeF16
{
    public static void DequantizeF32F16(ReadOnlySpan<byte> w, int rows, int cols, Span<Half> dst) => Run(GgmlType.F32, w, rows, cols, dst);

    public static void DequantizeF16F16(ReadOnlySpan<byte> w, int rows, int cols, Span<Half> dst) => Run(GgmlType.F16, w, rows, cols, dst);

    public static void DequantizeBF16F16(ReadOnlySpan<byte> w, int rows, int cols, Span<Half> dst) => Run(GgmlType.BF16, w, rows, cols, dst);

    public static void DequantizeQ8_0F16(ReadOnlySpan<byte> w, int rows, int cols, Span<Half> dst) => Run(GgmlType.Q8_0, w, rows, cols, dst);

    public static void DequantizeQ4_0F16(ReadOnlySpan<byte> w, int rows, int cols, Span<Half> dst) => Run(GgmlType.Q4_0, w, rows, cols, dst);

    public static void DequantizeQ4_KF16(ReadOnlySpan<byte> w, int rows, int cols, Span<Half> dst) => Run(GgmlType.Q4_K, w, rows, cols, dst);

    public static void DequantizeQ6_KF16(ReadOnlySpan<byte> w, int rows, int cols, Span<Half> dst) => Run(GgmlType.Q6_K, w, rows, cols, dst);

    /// <summary>Any weight type: [rows, cols] of <paramref name="type"/> into [rows, cols] halves.</summary>
    public static void Run(GgmlType type, ReadOnlySpan<byte> w, int rows, int cols, Span<Half> dst)
    {
        int rowBytes = checked((int)GgmlTypeInfo.RowBytes(type, cols));
        if (w.Length < (long)rowBytes * rows || dst.Length < rows * cols)
            throw new ArgumentException($"dequantize_f16: W {type} [{rows}, {cols}] in {w.Length} bytes into {dst.Length} halves");
        var row = new float[cols];
        for (int r = 0; r < rows; r++)
        {
            Quantization.Dequantize.Row(type, w.Slice(r * rowBytes, rowBytes), row);
            ConvertF32F16(row, dst.Slice(r * cols, cols));
        }
    }

    /// <summary>dst[i] = (Half)x[i].</summary>
    public static void ConvertF32F16(ReadOnlySpan<float> x, Span<Half> dst)
    {
        for (int i = 0; i < x.Length; i++)
            dst[i] = (Half)x[i];
    }
}
