using System.Numerics.Tensors;

namespace Engine.Backends.Cpu.Kernels;

/// <summary>Elementwise pieces of the forward pass.</summary>
public static class Activations
{
    /// <summary>SwiGLU (Shazeer, "GLU Variants Improve Transformer", 2020): y = silu(g) · u, silu(g) = g·σ(g).</summary>
    public static void SwiGluF32(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> y)
    {
        for (int i = 0; i < y.Length; i++)
        {
            float g = gate[i];
            y[i] = g / (1f + MathF.Exp(-g)) * up[i];
        }
    }

    /// <summary>
    /// y = exp(x - max x) / Σ exp(x - max x). Subtracting the max first keeps exp from overflowing
    /// (TensorPrimitives.SoftMax does not). y may be x.
    /// </summary>
    public static void SoftmaxF32(ReadOnlySpan<float> x, Span<float> y)
    {
        float max = float.NegativeInfinity;
        foreach (float v in x)
            max = MathF.Max(max, v);
        float sum = 0;
        for (int i = 0; i < x.Length; i++)
        {
            float e = MathF.Exp(x[i] - max);
            y[i] = e;
            sum += e;
        }
        TensorPrimitives.Divide(y[..x.Length], sum, y[..x.Length]);
    }

    /// <summary>y += x.</summary>
    public static void AddF32(Span<float> y, ReadOnlySpan<float> x) => TensorPrimitives.Add(y, x, y);
}
