using System.Numerics.Tensors;

namespace Engine.Backends.Cpu.Kernels;

/// <summary>Elementwise pieces of the forward pass.</summary>
public static class Activations
{
    [ThreadStatic]
    private static float[]? s_scratch;

    /// <summary>
    /// SwiGLU (Shazeer, "GLU Variants Improve Transformer", 2020): y = silu(g) · u with
    /// silu(g) = g·σ(g), vectorized through TensorPrimitives.Sigmoid. y may be g.
    /// </summary>
    public static void SwiGluF32(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> y)
    {
        var scratch = s_scratch is { } s && s.Length >= gate.Length ? s : s_scratch = new float[Math.Max(gate.Length, 1024)];
        var sig = scratch.AsSpan(0, gate.Length);
        TensorPrimitives.Sigmoid(gate, sig);
        TensorPrimitives.Multiply(sig, gate, sig);
        TensorPrimitives.Multiply(sig, up, y);
    }

    /// <summary>
    /// A mixture of experts' weighted sum (moe_combine_f32 in kernels/moe.cu): row t of y [rows, cols] =
    /// Σ_j weights[t·k + j] · src row slots[t·k + j], accumulated in j order from zero with each product
    /// rounded before it is added — the kernel does the same, so the two agree bit for bit.
    /// </summary>
    public static void MoeCombineF32(float[] src, ReadOnlySpan<int> slots, ReadOnlySpan<float> weights, int k, float[] y, int rows, int cols)
    {
        for (int t = 0; t < rows; t++)
        {
            var row = y.AsSpan(t * cols, cols);
            row.Clear();
            for (int j = 0; j < k; j++)
            {
                float w = weights[t * k + j];
                var x = src.AsSpan(slots[t * k + j] * cols, cols);
                int c = 0;
                if (System.Numerics.Vector.IsHardwareAccelerated)
                {
                    var vw = new System.Numerics.Vector<float>(w);
                    var vr = System.Runtime.InteropServices.MemoryMarshal.Cast<float, System.Numerics.Vector<float>>(row);
                    var vx = System.Runtime.InteropServices.MemoryMarshal.Cast<float, System.Numerics.Vector<float>>(x);
                    for (int v = 0; v < vr.Length; v++)
                        vr[v] += vw * vx[v]; // a multiply, then an add: two roundings, as the kernel's __fmul_rn / __fadd_rn
                    c = vr.Length * System.Numerics.Vector<float>.Count;
                }
                for (; c < cols; c++)
                    row[c] += w * x[c];
            }
        }
    }

    /// <summary>
    /// GeGLU (Shazeer 2020) as Gemma uses it: y = gelu(g) · u with the tanh approximation
    /// gelu(g) = ½g(1 + tanh(√(2/π)(g + 0.044715g³))) (PyTorch's <c>gelu(approximate="tanh")</c>), in
    /// float32 exactly as geglu_f32 (kernels/swiglu.cu) computes it. y may be g.
    /// </summary>
    public static void GeGluF32(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> y)
    {
        for (int i = 0; i < gate.Length; i++)
            y[i] = GeluTanh(gate[i]) * up[i];
    }

    /// <summary>The tanh-approximated GELU of one value (gelu_tanh in kernels/common.cuh).</summary>
    public static float GeluTanh(float x)
    {
        const float SqrtTwoOverPi = 0.7978845608028654f;
        float inner = SqrtTwoOverPi * MathF.FusedMultiplyAdd(0.044715f * x, x * x, x);
        return 0.5f * x * (1f + MathF.Tanh(inner));
    }

    /// <summary>
    /// Soft-capping (Gemma 2's final logits): x = cap · tanh(x / cap), elementwise (soft_cap_f32 in
    /// kernels/add.cu). Keeps the order of the logits and bounds them to (−cap, cap).
    /// </summary>
    public static void SoftCapF32(Span<float> x, float cap)
    {
        for (int i = 0; i < x.Length; i++)
            x[i] = cap * MathF.Tanh(x[i] / cap);
    }

    /// <summary>
    /// y = exp(x - max x) / Σ exp(x - max x). Subtracting the max first keeps exp from overflowing
    /// (TensorPrimitives.SoftMax does not). y may be x.
    /// </summary>
    public static void SoftmaxF32(ReadOnlySpan<float> x, Span<float> y)
    {
        float max = TensorPrimitives.Max(x);
        var yx = y[..x.Length];
        TensorPrimitives.Subtract(x, max, yx);
        TensorPrimitives.Exp(yx, yx);
        TensorPrimitives.Divide(yx, TensorPrimitives.Sum(yx), yx);
    }

    /// <summary>y += x (add_f32 in kernels/add.cu).</summary>
    public static void AddF32(Span<float> y, ReadOnlySpan<float> x) => TensorPrimitives.Add(y, x, y);

    /// <summary>x *= s (scale_f32).</summary>
    public static void ScaleF32(Span<float> x, float s) => TensorPrimitives.Multiply(x, s, x);

    /// <summary>x[r, :] += bias for every row of x [rows, bias.Length] (add_bias_f32 in kernels/add.cu).</summary>
    public static void AddBiasF32(Span<float> x, ReadOnlySpan<float> bias)
    {
        for (int r = 0; r + bias.Length <= x.Length; r += bias.Length)
            TensorPrimitives.Add(x.Slice(r, bias.Length), bias, x.Slice(r, bias.Length));
    }

    /// <summary>
    /// The first index of the largest value (argmax_f32 in kernels/argmax.cu). NaN never wins; a row of
    /// only NaN or -∞ gives 0.
    /// </summary>
    public static int ArgMaxF32(ReadOnlySpan<float> x)
    {
        int best = 0;
        float max = float.NegativeInfinity;
        for (int i = 0; i < x.Length; i++)
        {
            if (x[i] > max)
            {
                max = x[i];
                best = i;
            }
        }
        return best;
    }
}
