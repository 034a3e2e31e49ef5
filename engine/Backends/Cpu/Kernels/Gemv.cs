using Engine.Tensors;

namespace Engine.Backends.Cpu.Kernels;

/// <summary>
/// y[c, r] = Σ_k W[r, k]·x[c, k] for a weight matrix W [rows, cols] in its GGUF format and activation
/// rows x [ncols, cols], in plain float32: each weight row dequantized (<see cref="Quantization.Dequantize"/>)
/// and multiplied in order. CPU reference of <c>gemv_&lt;type&gt;</c> in kernels/gemv.cu, which sums
/// the same products in a different order (32 lanes, then a tree): the two agree to float rounding,
/// not bit for bit. The CPU backend's fast path is <see cref="MatMul"/>; this one is for checking.
/// </summary>
public static class Gemv
{
    public static void GemvF32(ReadOnlySpan<byte> w, int rows, int cols, ReadOnlySpan<float> x, int ncols, Span<float> y) => Run(GgmlType.F32, w, rows, cols, x, ncols, y);

    public static void GemvF16(ReadOnlySpan<byte> w, int rows, int cols, ReadOnlySpan<float> x, int ncols, Span<float> y) => Run(GgmlType.F16, w, rows, cols, x, ncols, y);

    public static void GemvBF16(ReadOnlySpan<byte> w, int rows, int cols, ReadOnlySpan<float> x, int ncols, Span<float> y) => Run(GgmlType.BF16, w, rows, cols, x, ncols, y);

    public static void GemvQ8_0(ReadOnlySpan<byte> w, int rows, int cols, ReadOnlySpan<float> x, int ncols, Span<float> y) => Run(GgmlType.Q8_0, w, rows, cols, x, ncols, y);

    public static void GemvQ4_0(ReadOnlySpan<byte> w, int rows, int cols, ReadOnlySpan<float> x, int ncols, Span<float> y) => Run(GgmlType.Q4_0, w, rows, cols, x, ncols, y);

    public static void GemvQ4_K(ReadOnlySpan<byte> w, int rows, int cols, ReadOnlySpan<float> x, int ncols, Span<float> y) => Run(GgmlType.Q4_K, w, rows, cols, x, ncols, y);

    public static void GemvQ6_K(ReadOnlySpan<byte> w, int rows, int cols, ReadOnlySpan<float> x, int ncols, Span<float> y) => Run(GgmlType.Q6_K, w, rows, cols, x, ncols, y);

    /// <summary>Any weight type.</summary>
    public static void Run(GgmlType type, ReadOnlySpan<byte> w, int rows, int cols, ReadOnlySpan<float> x, int ncols, Span<float> y)
    {
        int rowBytes = checked((int)GgmlTypeInfo.RowBytes(type, cols));
        if (w.Length < (long)rowBytes * rows || x.Length < ncols * cols || y.Length < ncols * rows)
            throw new ArgumentException($"gemv: W {type} [{rows}, {cols}] in {w.Length} bytes, x {x.Length} for {ncols} rows, y {y.Length}");
        var row = new float[cols];
        for (int r = 0; r < rows; r++)
        {
            Quantization.Dequantize.Row(type, w.Slice(r * rowBytes, rowBytes), row);
            for (int c = 0; c < ncols; c++)
            {
                var xc = x.Slice(c * cols, cols);
                float sum = 0;
                for (int k = 0; k < cols; k++)
                    sum = MathF.FusedMultiplyAdd(row[k], xc[k], sum);
                y[c * rows + r] = sum;
            }
        }
    }
}
