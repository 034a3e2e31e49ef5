using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using Engine.Quantization;
using Engine.Tensors;

namespace Engine.Backends.Cpu.Kernels;

/// <summary>
/// y = x·Wᵀ for a weight matrix in any GGUF weight type, over a range of W's rows. Each weight row is
/// read once per call and dotted with every row of x, so a batch (prefill, a draft tree) costs one pass
/// over the weights. Quantized rows are dequantized into a per-thread buffer first; the fused quantized
/// dot products of the CPU-speed work replace that step without changing this signature.
/// </summary>
public static class MatMul
{
    [ThreadStatic]
    private static float[]? s_row;

    /// <param name="x">[n, cols] activations.</param>
    /// <param name="w">Weights [rows, cols] in <c>w.Type</c>'s format.</param>
    /// <param name="y">[n, rows] output.</param>
    public static void Rows(ReadOnlySpan<float> x, int n, TensorView w, Span<float> y, int rowStart, int rowEnd)
    {
        int cols = checked((int)w.RowLength);
        int rows = checked((int)w.RowCount);
        for (int o = rowStart; o < rowEnd; o++)
        {
            ReadOnlySpan<float> wRow = WeightRow(w, o, cols);
            for (int r = 0; r < n; r++)
                y[r * rows + o] = TensorPrimitives.Dot(x.Slice(r * cols, cols), wRow);
        }
    }

    /// <summary>Row <paramref name="o"/> of W as floats (in place for F32, else dequantized into a per-thread buffer).</summary>
    public static ReadOnlySpan<float> WeightRow(TensorView w, int o, int cols)
    {
        var bytes = w.Row(o);
        if (w.Type == GgmlType.F32)
            return MemoryMarshal.Cast<byte, float>(bytes);
        var buffer = s_row is { } b && b.Length >= cols ? b : s_row = new float[cols];
        var row = buffer.AsSpan(0, cols);
        Dequantize.Row(w.Type, bytes, row);
        return row;
    }
}
