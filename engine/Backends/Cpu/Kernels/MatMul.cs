using Engine.Quantization;
using Engine.Tensors;

namespace Engine.Backends.Cpu.Kernels;

/// <summary>
/// y = x·Wᵀ over a range of W's rows, for a weight matrix in its GGUF type. Each weight row is read
/// once per call and dotted with every row of x, so a batch (prefill, a draft tree) costs one pass over
/// the weights. Quantized types with a fast kernel (Q8_0, Q4_0, Q4_K, Q6_K) take activations quantized
/// to int8 beforehand (<see cref="QuantizedActivations"/>); F16/BF16/F32 take float activations; the
/// other quantized types fall back to dequantizing each row into a per-thread buffer.
/// </summary>
public static unsafe class MatMul
{
    [ThreadStatic]
    private static float[]? s_row;

    /// <summary>The int8 activation format a weight type's fast kernel wants, or null for float activations.</summary>
    public static ActivationBlock? ActivationFor(GgmlType type) => type switch
    {
        GgmlType.Q8_0 or GgmlType.Q4_0 => ActivationBlock.Q8_0,
        GgmlType.Q4_K or GgmlType.Q6_K => ActivationBlock.Q8_K,
        _ => null,
    };

    /// <summary>
    /// y[r, o] = x[r, :] · W[o, :] for o in [<paramref name="rowStart"/>, <paramref name="rowEnd"/>), r &lt; n.
    /// </summary>
    /// <param name="x">[n, cols] float activations.</param>
    /// <param name="qx">The same activations quantized to <see cref="ActivationFor"/>(W.Type), or null if it needs none.</param>
    /// <param name="y">[n, rows] output.</param>
    public static void Rows(TensorView w, ReadOnlySpan<float> x, QuantizedActivations? qx, int n, Span<float> y, int rowStart, int rowEnd)
    {
        int cols = checked((int)w.RowLength);
        int rows = checked((int)w.RowCount);
        long rowBytes = w.RowBytes;
        // Whole groups of 8 activation rows go through the matrix-matrix kernels; the rest row by row.
        int groups = HasGemm(w.Type, cols) && (qx is not null || ActivationFor(w.Type) is null) ? n / QuantizedActivations.Group : 0;
        if (qx is not null)
            groups = Math.Min(groups, qx.Groups);
        float* out8 = stackalloc float[QuantizedActivations.Group];
        fixed (float* xp = x)
        fixed (float* yp = y)
        {
            for (int o = rowStart; o < rowEnd; o++)
            {
                byte* wr = w.Data + o * rowBytes;
                for (int g = 0; g < groups; g++)
                {
                    Gemm8(w.Type, wr, cols, xp + (long)g * QuantizedActivations.Group * cols, qx, g, out8);
                    for (int r = 0; r < QuantizedActivations.Group; r++)
                        yp[(long)(g * QuantizedActivations.Group + r) * rows + o] = out8[r];
                }
                for (int r = groups * QuantizedActivations.Group; r < n; r++)
                    yp[(long)r * rows + o] = Dot(w.Type, wr, cols, xp + (long)r * cols, qx, r);
            }
        }
    }

    /// <summary>Whether a type has a matrix-matrix kernel on this CPU.</summary>
    public static bool HasGemm(GgmlType type, int cols) => CpuFeatures.Avx2Fma && type switch
    {
        GgmlType.F32 or GgmlType.F16 => cols % 8 == 0,
        GgmlType.Q8_0 or GgmlType.Q4_0 or GgmlType.Q4_K or GgmlType.Q6_K => true,
        _ => false,
    };

    private static void Gemm8(GgmlType type, byte* w, int cols, float* x, QuantizedActivations? qx, int group, float* y)
    {
        bool vnni = CpuFeatures.Vnni;
        switch (type)
        {
            case GgmlType.F32: Gemm.F32((float*)w, cols, x, QuantizedActivations.Group, y); break;
            case GgmlType.F16: Gemm.F16((ushort*)w, cols, x, QuantizedActivations.Group, y); break;
            case GgmlType.Q8_0: if (vnni) Gemm.Q8_0<VnniIsa>(w, cols / 32, qx!, group, y); else Gemm.Q8_0<Avx2Isa>(w, cols / 32, qx!, group, y); break;
            case GgmlType.Q4_0: if (vnni) Gemm.Q4_0<VnniIsa>(w, cols / 32, qx!, group, y); else Gemm.Q4_0<Avx2Isa>(w, cols / 32, qx!, group, y); break;
            case GgmlType.Q4_K: if (vnni) Gemm.Q4_K<VnniIsa>(w, cols / 256, qx!, group, y); else Gemm.Q4_K<Avx2Isa>(w, cols / 256, qx!, group, y); break;
            case GgmlType.Q6_K: if (vnni) Gemm.Q6_K<VnniIsa>(w, cols / 256, qx!, group, y); else Gemm.Q6_K<Avx2Isa>(w, cols / 256, qx!, group, y); break;
            default: throw new NotSupportedException(type.ToString());
        }
    }

    /// <summary>One weight row (at <paramref name="w"/>) with activation row <paramref name="r"/>.</summary>
    public static float Dot(GgmlType type, byte* w, int cols, float* x, QuantizedActivations? qx, int r)
    {
        if (qx is null && ActivationFor(type) is not null)
            return DequantizedDot(type, w, cols, x); // float activations were asked for
        switch (type)
        {
            case GgmlType.F32: return VecDot.F32((float*)w, x, cols);
            case GgmlType.F16: return VecDot.F16((ushort*)w, x, cols);
            case GgmlType.BF16: return VecDot.BF16((ushort*)w, x, cols);
            case GgmlType.Q8_0: return VecDot.Q8_0(w, qx!.Q(r), qx.D(r), cols / 32);
            case GgmlType.Q4_0: return VecDot.Q4_0(w, qx!.Q(r), qx.D(r), qx.ScaledSums(r), cols / 32);
            case GgmlType.Q4_K: return VecDot.Q4_K(w, qx!.Q(r), qx.D(r), qx.Sums16(r), cols / 256);
            case GgmlType.Q6_K: return VecDot.Q6_K(w, qx!.Q(r), qx.D(r), qx.Sums16(r), cols / 256);
            default:
                return DequantizedDot(type, w, cols, x);
        }
    }

    /// <summary>Dequantize the weight row into a per-thread buffer and dot in float.</summary>
    private static float DequantizedDot(GgmlType type, byte* w, int cols, float* x)
    {
        var buffer = s_row is { } b && b.Length >= cols ? b : s_row = new float[cols];
        Dequantize.Row(type, new ReadOnlySpan<byte>(w, checked((int)GgmlTypeInfo.RowBytes(type, cols))), buffer.AsSpan(0, cols));
        fixed (float* bp = buffer)
            return VecDot.F32(bp, x, cols);
    }

}
