using System.Numerics.Tensors;

namespace Engine.Backends.Cpu.Kernels;

/// <summary>
/// RMSNorm (Zhang &amp; Sennrich, "Root Mean Square Layer Normalization", 2019):
/// y = x / sqrt(mean(x²) + eps) · w. CPU reference of <c>rms_norm_f32</c> in kernels/rmsnorm.cu.
/// </summary>
public static class RmsNorm
{
    /// <summary>One row. <paramref name="y"/> may be <paramref name="x"/>.</summary>
    public static void RmsNormF32(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, float eps, Span<float> y)
    {
        if (weight.Length != x.Length || y.Length != x.Length)
            throw new ArgumentException($"rms_norm_f32: x has {x.Length} values, weight {weight.Length}, y {y.Length}");
        float meanSquare = TensorPrimitives.SumOfSquares(x) / x.Length;
        float scale = 1f / MathF.Sqrt(meanSquare + eps);
        TensorPrimitives.Multiply(x, scale, y);
        TensorPrimitives.Multiply(y, weight, y);
    }

    /// <summary>Every row of a [rows, cols] matrix.</summary>
    public static void RmsNormF32(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, float eps, Span<float> y, int rows)
    {
        int cols = weight.Length;
        for (int r = 0; r < rows; r++)
            RmsNormF32(x.Slice(r * cols, cols), weight, eps, y.Slice(r * cols, cols));
    }
}
