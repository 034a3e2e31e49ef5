using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;
using Engine.Backends.Cpu.Kernels;
using Engine.Quantization;
using Engine.Tensors;

namespace Engine.Tests;

/// <summary>
/// The CPU matrix kernels against their scalar references, on random data and awkward sizes.
/// </summary>
/// <remarks>
/// SIMD vs scalar: both compute the same integer dot products per block (exact); only the order in
/// which the float block results are summed differs. For n terms float32 summation error is at most
/// about n·2^-24 of Σ|terms|; with at most 128 blocks that is 7.6e-6, so we allow 1e-5 of Σ|wᵢxᵢ|.
///
/// Quantized vs exact: int8 activations round each xᵢ to a multiple of its block scale d, an error of at
/// most d/2, so |quantized dot - float dot| ≤ Σ |wᵢ|·d/2 (plus float rounding) — a bound that holds for
/// every input, not a statistical one.
/// </remarks>
public unsafe class KernelTests
{
    public static IEnumerable<TestCaseData> Cases()
    {
        foreach (var type in new[] { GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_K, GgmlType.Q6_K })
        {
            int block = GgmlTypeInfo.Layout(type)!.Value.BlockSize;
            foreach (int blocks in new[] { 1, 2, 3, 4, 7, 9, 2048 / block })
                yield return new TestCaseData(type, blocks * block).SetName($"{type} × {blocks * block}");
        }
    }

    private sealed class Data : IDisposable
    {
        public byte* W;
        public float[] WeightValues = [];
        public float[] X = [];
        public QuantizedActivations Q = new();
        public int Rows, Cols;
        public long RowBytes;

        public void Dispose() => NativeMemory.Free(W);
    }

    /// <summary>Random weights (rows × cols, quantized to type) and random activations (n × cols, quantized).</summary>
    private static Data Make(GgmlType type, int rows, int cols, int n, int seed)
    {
        var rng = new Random(seed);
        var d = new Data { Rows = rows, Cols = cols, RowBytes = GgmlTypeInfo.RowBytes(type, cols) };
        d.W = (byte*)NativeMemory.Alloc((nuint)(d.RowBytes * rows));
        d.WeightValues = new float[rows * cols];
        var row = new float[cols];
        for (int r = 0; r < rows; r++)
        {
            for (int i = 0; i < cols; i++)
                row[i] = (float)(rng.NextDouble() * 2 - 1) * (i % 37 == 0 ? 4 : 1); // some outliers
            var bytes = new Span<byte>(d.W + r * d.RowBytes, (int)d.RowBytes);
            Quantize.Row(type, row, bytes);
            Dequantize.Row(type, bytes, d.WeightValues.AsSpan(r * cols, cols));
        }
        d.X = new float[n * cols];
        for (int i = 0; i < d.X.Length; i++)
            d.X[i] = (float)(rng.NextDouble() * 2 - 1) * (i % 53 == 0 ? 8 : 1);
        if (MatMul.ActivationFor(type) is { } kind)
            d.Q.Quantize(d.X, n, cols, kind);
        return d;
    }

    private static float Kernel<T>(GgmlType type, byte* w, QuantizedActivations q, int row, int cols) where T : IIsa => type switch
    {
        GgmlType.Q8_0 => VecDot.Q8_0<T>(w, q.Q(row), q.D(row), cols / 32),
        GgmlType.Q4_0 => VecDot.Q4_0<T>(w, q.Q(row), q.D(row), q.ScaledSums(row), cols / 32),
        GgmlType.Q4_K => VecDot.Q4_K<T>(w, q.Q(row), q.D(row), q.Sums16(row), cols / 256),
        _ => VecDot.Q6_K<T>(w, q.Q(row), q.D(row), q.Sums16(row), cols / 256),
    };

    /// <summary>The dispatching entry point, which on an AVX-512+GFNI CPU runs the 512-bit kernel (plus the 256-bit one for a Q4_0 tail of 1..3 blocks).</summary>
    private static float? Kernel512(GgmlType type, byte* w, QuantizedActivations q, int row, int cols) => type switch
    {
        GgmlType.Q4_0 => VecDot.Q4_0(w, q.Q(row), q.D(row), q.ScaledSums(row), cols / 32),
        GgmlType.Q4_K => VecDot.Q4_K(w, q.Q(row), q.D(row), q.Sums16(row), cols / 256),
        GgmlType.Q6_K => VecDot.Q6_K(w, q.Q(row), q.D(row), q.Sums16(row), cols / 256),
        _ => null,
    };

    private static float Scalar(GgmlType type, byte* w, QuantizedActivations q, int row, int cols) => type switch
    {
        GgmlType.Q8_0 => VecDot.Q8_0Scalar(w, q.Q(row), q.D(row), cols / 32),
        GgmlType.Q4_0 => VecDot.Q4_0Scalar(w, q.Q(row), q.D(row), q.ScaledSums(row), cols / 32),
        GgmlType.Q4_K => VecDot.Q4_KScalar(w, q.Q(row), q.D(row), q.Sums16(row), cols / 256),
        _ => VecDot.Q6_KScalar(w, q.Q(row), q.D(row), q.Sums16(row), cols / 256),
    };

    private static double AbsDot(ReadOnlySpan<float> w, ReadOnlySpan<float> x)
    {
        double s = 0;
        for (int i = 0; i < w.Length; i++)
            s += Math.Abs((double)w[i] * x[i]);
        return s;
    }

    [TestCaseSource(nameof(Cases))]
    public void Simd_dot_equals_the_scalar_reference(GgmlType type, int cols)
    {
        if (!Avx2.IsSupported || !Fma.IsSupported)
            Assert.Ignore("this CPU has no AVX2+FMA: only the scalar path runs here");
        using var d = Make(type, rows: 5, cols, n: 2, seed: cols);
        for (int r = 0; r < d.Rows; r++)
        {
            byte* w = d.W + r * d.RowBytes;
            for (int x = 0; x < 2; x++)
            {
                float scalar = Scalar(type, w, d.Q, x, cols);
                double bound = 1e-5 * AbsDot(d.WeightValues.AsSpan(r * cols, cols), d.X.AsSpan(x * cols, cols)) + 1e-6;
                Assert.That(Kernel<Avx2Isa>(type, w, d.Q, x, cols), Is.EqualTo(scalar).Within(bound), $"AVX2, row {r}, input {x}");
                if (AvxVnni.IsSupported)
                    Assert.That(Kernel<VnniIsa>(type, w, d.Q, x, cols), Is.EqualTo(scalar).Within(bound), $"AVX-VNNI, row {r}, input {x}");
                if (VecDot.Avx512Gfni && Kernel512(type, w, d.Q, x, cols) is { } wide)
                    Assert.That(wide, Is.EqualTo(scalar).Within(bound), $"AVX-512, row {r}, input {x}");
            }
        }
    }

    [TestCaseSource(nameof(Cases))]
    public void Quantized_dot_is_within_the_activation_rounding_bound_of_the_float_dot(GgmlType type, int cols)
    {
        using var d = Make(type, rows: 4, cols, n: 1, seed: cols + 1);
        int block = (int)MatMul.ActivationFor(type)!.Value;
        for (int r = 0; r < d.Rows; r++)
        {
            var w = d.WeightValues.AsSpan(r * cols, cols);
            double exact = 0, bound = 0;
            for (int i = 0; i < cols; i++)
            {
                exact += (double)w[i] * d.X[i];
                bound += Math.Abs(w[i]) * d.Q.D(0)[i / block] / 2;
            }
            float quantized = Scalar(type, d.W + r * d.RowBytes, d.Q, 0, cols);
            Assert.That(quantized, Is.EqualTo(exact).Within(bound * 1.0001 + 1e-5 * AbsDot(w, d.X)), $"row {r}");
            Assert.That(Math.Abs(quantized - exact), Is.GreaterThan(0), "the int8 path is really in use (it is never exactly the float dot on random data)");
        }
    }

    public static IEnumerable<TestCaseData> GemmCases()
    {
        foreach (var type in new[] { GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1, GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K, GgmlType.F16, GgmlType.BF16, GgmlType.F32 })
        {
            int block = Math.Max(8, GgmlTypeInfo.Layout(type)!.Value.BlockSize);
            // 19 rows: a 16-row panel (float) or 2 groups of 8 (quantized), then rows left over; 27 rows: 16 + 8 + 3;
            // 53 rows: three panels or six groups, then 5.
            foreach (int n in new[] { 19, 27, 53 })
                yield return new TestCaseData(type, block * (type is GgmlType.F16 or GgmlType.BF16 or GgmlType.F32 ? 67 : 3), n).SetName($"{type} gemm, {n} rows");
        }
    }

    /// <summary>
    /// The matrix kernels (whole groups of 8 rows) and the row kernels (the rows left over) against the
    /// exact float product. Float weights: float32 rounding only. Quantized weights: the int8 activation
    /// rounding bound (Q8_0 scales in the matrix kernels, the type's own activation format in the rows).
    /// </summary>
    [TestCaseSource(nameof(GemmCases))]
    public void Matrix_kernels_match_the_exact_product(GgmlType type, int cols, int n)
    {
        if (!MatMul.HasGemm(type, cols))
            Assert.Ignore("no matrix kernel on this CPU");
        using var d = Make(type, rows: 13, cols, n, seed: 7);
        var view = new TensorView("w", type, [cols, d.Rows], d.W, d.RowBytes * d.Rows);
        var kind = MatMul.ActivationFor(type);
        var groups = new QuantizedActivations();
        var panels = new FloatPanels();
        bool quantized = type is not (GgmlType.F16 or GgmlType.BF16 or GgmlType.F32);
        if (quantized)
        {
            groups.Quantize(d.X, n, cols, ActivationBlock.Q8_0);
            groups.Interleave();
        }
        else
            panels.Pack(d.X, n, cols);
        var y = new float[n * d.Rows];
        MatMul.Rows(view, null, d.X, kind is null ? null : d.Q, quantized ? groups : null, quantized ? null : panels, n, y, 0, d.Rows);
        int grouped = n / 8 * 8;
        for (int r = 0; r < n; r++)
        {
            var xr = d.X.AsSpan(r * cols, cols);
            for (int o = 0; o < d.Rows; o++)
            {
                var w = d.WeightValues.AsSpan(o * cols, cols);
                double exact = 0, bound = 0;
                for (int i = 0; i < cols; i++)
                {
                    exact += (double)w[i] * xr[i];
                    if (r < grouped && quantized)
                        bound += Math.Abs(w[i]) * groups.D(r)[i / 32] / 2;
                    else if (kind is { } k)
                        bound += Math.Abs(w[i]) * d.Q.D(r)[i / (int)k] / 2;
                }
                bound = bound * 1.0001 + 1e-5 * AbsDot(w, xr) + 1e-6;
                Assert.That(y[r * d.Rows + o], Is.EqualTo(exact).Within(bound), $"row {r} ({(r < grouped ? "matrix" : "row")} kernel), output {o}");
            }
        }
    }

    public static IEnumerable<GgmlType> DecodableTypes() =>
        [GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1, GgmlType.Q2_K, GgmlType.Q3_K, GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K];

    /// <summary>
    /// Decoded rows reproduce the format's values: scale·code + bias of each weight's sub-block equals
    /// the dequantized value (up to the rounding of that one multiply-add).
    /// </summary>
    [TestCaseSource(nameof(DecodableTypes))]
    public void Decoded_codes_scales_and_biases_reproduce_the_weights(GgmlType type)
    {
        int cols = 512, rows = 3;
        var bytes = RandomBlocks(type, rows, cols, new Random((int)type + 100));
        fixed (byte* p = bytes)
        {
            var view = new TensorView("w", type, [cols, rows], p, bytes.Length);
            using var decoded = new DecodedRows();
            decoded.Decode(view, 0, rows);
            var values = new float[cols];
            for (int r = 0; r < rows; r++)
            {
                Dequantize.Row(type, view.Row(r), values);
                for (int i = 0; i < cols; i++)
                {
                    int sb = i / decoded.SubBlock;
                    float v = decoded.Scales(r)[sb] * decoded.Codes(r)[i] + decoded.Biases(r)[sb];
                    Assert.That(v, Is.EqualTo(values[i]).Within(1e-5f * (MathF.Abs(values[i]) + MathF.Abs(decoded.Biases(r)[sb])) + 1e-7f), $"row {r}, value {i}");
                }
            }
        }
    }

    /// <summary><paramref name="rows"/> rows of random blocks of <paramref name="type"/>, with finite float16 scales wherever the format keeps them.</summary>
    private static byte[] RandomBlocks(GgmlType type, int rows, int cols, Random rng)
    {
        var (blockSize, typeSize) = GgmlTypeInfo.Layout(type)!.Value;
        var bytes = new byte[rows * cols / blockSize * typeSize];
        rng.NextBytes(bytes);
        int[] halves = type switch
        {
            GgmlType.Q4_0 or GgmlType.Q5_0 or GgmlType.Q8_0 => [0],
            GgmlType.Q4_1 or GgmlType.Q5_1 or GgmlType.Q4_K or GgmlType.Q5_K => [0, 2],
            GgmlType.Q2_K => [80, 82],
            GgmlType.Q3_K => [108],
            _ => [208],
        };
        for (int b = 0; b < bytes.Length / typeSize; b++)
        {
            foreach (int h in halves)
                System.Buffers.Binary.BinaryPrimitives.WriteHalfLittleEndian(bytes.AsSpan(b * typeSize + h), (Half)((rng.NextDouble() * 2 - 1) * 0.1));
        }
        return bytes;
    }

    /// <summary>
    /// Rows of the types without a row kernel (Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, and Q5_K where it is not repacked: these
    /// 13 rows are not) through <see cref="MatMul.Rows"/> with float activations — decoding's path: decoded once, then
    /// per sub-block scale·Σ code·x + bias·Σ x — against the dequantized weights' exact product, on random blocks.
    /// The bound: each term's float rounding (2e-6 relative: a sum of up to 32 products, then two fused
    /// multiply-adds) over the terms' magnitudes, plus the decoded weights' own rounding (1e-5 of |w|·|x|).
    /// </summary>
    [TestCase(GgmlType.Q4_1)]
    [TestCase(GgmlType.Q5_0)]
    [TestCase(GgmlType.Q5_1)]
    [TestCase(GgmlType.Q2_K)]
    [TestCase(GgmlType.Q3_K)]
    [TestCase(GgmlType.Q5_K)]
    public void Rows_without_a_row_kernel_match_the_dequantized_product(GgmlType type)
    {
        if (!CpuFeatures.Avx2Fma)
            Assert.Ignore("the decoded rows need AVX2 and FMA");
        int cols = 512, rows = 13, n = 3;
        var rng = new Random((int)type + 300);
        var bytes = RandomBlocks(type, rows, cols, rng);
        var x = new float[n * cols];
        for (int i = 0; i < x.Length; i++)
            x[i] = (float)(rng.NextDouble() * 2 - 1);
        fixed (byte* p = bytes)
        {
            var view = new TensorView("w", type, [cols, rows], p, bytes.Length);
            Assert.That(MatMul.ActivationFor(type), Is.Null, $"{type} has no int8 row kernel, so its rows take the decoded path");
            var y = new float[n * rows];
            MatMul.Rows(view, null, x, null, null, null, n, y, 0, rows);
            using var decoded = new DecodedRows();
            decoded.Decode(view, 0, rows);
            var w = new float[cols];
            for (int o = 0; o < rows; o++)
            {
                Dequantize.Row(type, view.Row(o), w);
                for (int r = 0; r < n; r++)
                {
                    double exact = 0, terms = 0, weights = 0;
                    for (int i = 0; i < cols; i++)
                    {
                        int sb = i / decoded.SubBlock;
                        exact += (double)w[i] * x[r * cols + i];
                        terms += (Math.Abs(decoded.Scales(o)[sb] * decoded.Codes(o)[i]) + Math.Abs(decoded.Biases(o)[sb])) * Math.Abs(x[r * cols + i]);
                        weights += Math.Abs(w[i] * x[r * cols + i]);
                    }
                    Assert.That(y[r * rows + o], Is.EqualTo(exact).Within(2e-6 * terms + 1e-5 * weights + 1e-6), $"{type}: weight row {o}, activation row {r}");
                }
            }
        }
    }

    /// <summary>
    /// Activation quantization (vectorized) against the scalar formula it replaced: the same bytes, scales
    /// and sums for both block kinds, on rows with an all-zero block, values exactly halfway between two
    /// codes (ties to even), a huge value, and a NaN (whose block keeps the scalar loop's result).
    /// </summary>
    [TestCase(ActivationBlock.Q8_0)]
    [TestCase(ActivationBlock.Q8_K)]
    public void Activation_quantization_gives_the_scalar_formulas_bytes(ActivationBlock kind)
    {
        const int rows = 5, cols = 1024;
        var rng = new Random((int)kind);
        var x = new float[rows * cols];
        for (int i = 0; i < x.Length; i++)
            x[i] = (float)(rng.NextDouble() * 2 - 1) * (i % 97 == 0 ? 40 : 1);
        Array.Clear(x, 256, 256);                                   // row 0: zero blocks
        for (int i = 0; i < 32; i++)
            x[cols + i] = i == 0 ? 127f : i - 16 + 0.5f;            // row 1: scale 1, values halfway between codes
        x[2 * cols + 7] = 3e30f;                                    // row 2: a huge value
        x[3 * cols + 300] = float.NaN;                              // row 3: a NaN
        var qa = new QuantizedActivations();
        qa.Quantize(x, rows, cols, kind);
        int block = (int)kind;
        for (int r = 0; r < rows; r++)
        {
            for (int b = 0; b < cols / block; b++)
            {
                var values = x.AsSpan(r * cols + b * block, block);
                float amax = MathF.Abs(System.Numerics.Tensors.TensorPrimitives.MaxMagnitude(values));
                float d = amax / 127f, id = d != 0 ? 1f / d : 0f;
                var q = new sbyte[block];
                for (int i = 0; i < block; i++)
                    q[i] = (sbyte)MathF.Round(values[i] * id);
                Assert.That(BitConverter.SingleToInt32Bits(qa.D(r)[b]), Is.EqualTo(BitConverter.SingleToInt32Bits(d)), $"row {r}, block {b}: scale");
                for (int i = 0; i < block; i++)
                    Assert.That(qa.Q(r)[b * block + i], Is.EqualTo(q[i]), $"row {r}, block {b}, value {i}");
                for (int g = 0; g < block / 16; g++)
                    Assert.That(qa.Sums16(r)[b * block / 16 + g], Is.EqualTo(q.Skip(16 * g).Take(16).Sum(v => v)), $"row {r}, block {b}: sum {g}");
                if (kind == ActivationBlock.Q8_0)
                    Assert.That(BitConverter.SingleToInt32Bits(qa.ScaledSums(r)[b]), Is.EqualTo(BitConverter.SingleToInt32Bits(d * q.Sum(v => v))), $"row {r}, block {b}: scaled sum");
            }
        }
    }

    [TestCase(1)]
    [TestCase(15)]
    [TestCase(16)]
    [TestCase(37)]
    [TestCase(4096)]
    public void Float_weight_dots_equal_their_scalar_reference(int n)
    {
        var rng = new Random(n);
        var x = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        // Mostly normal halves, with zeros and subnormals sprinkled in so that the 512-bit kernel takes
        // both its fast path (all 32 halves normal) and its exact fallback.
        var h = Enumerable.Range(0, n).Select(i => i % 89 == 5 ? (ushort)0x8000 : i % 97 == 7 ? (ushort)(0x0001 + i % 0x3FF)
            : BitConverter.HalfToUInt16Bits((Half)(rng.NextDouble() * 2 - 1))).ToArray();
        var b = Enumerable.Range(0, n).Select(_ => Quantize.ToBF16((float)(rng.NextDouble() * 2 - 1))).ToArray();
        fixed (float* xp = x)
        fixed (ushort* hp = h)
        fixed (ushort* bp = b)
        {
            double bound = 1e-5 * n;
            Assert.That(VecDot.F16(hp, xp, n), Is.EqualTo(VecDot.F16Scalar(hp, xp, n)).Within(bound));
            Assert.That(VecDot.BF16(bp, xp, n), Is.EqualTo(VecDot.BF16Scalar(bp, xp, n)).Within(bound));
        }
    }

    [Test]
    public void Vector_half_conversion_is_exact_for_every_half()
    {
        if (!System.Runtime.Intrinsics.Vector256.IsHardwareAccelerated)
            Assert.Ignore("no 256-bit vectors");
        var bits = new ushort[8];
        for (int i = 0; i < 65536; i += 8)
        {
            for (int k = 0; k < 8; k++)
                bits[k] = (ushort)(i + k);
            var v = HalfTable.Widen(System.Runtime.Intrinsics.Vector128.Create(bits));
            for (int k = 0; k < 8; k++)
            {
                float expected = (float)BitConverter.UInt16BitsToHalf(bits[k]);
                if (float.IsNaN(expected))
                    Assert.That(float.IsNaN(v[k]), Is.True, $"0x{bits[k]:X4} is NaN");
                else
                    Assert.That(BitConverter.SingleToInt32Bits(v[k]), Is.EqualTo(BitConverter.SingleToInt32Bits(expected)), $"0x{bits[k]:X4}");
            }
        }
    }

    [Test]
    public void Fast_widening_of_normal_halves_is_exact_and_used_only_when_every_half_is_normal()
    {
        if (!System.Runtime.Intrinsics.X86.Avx512F.IsSupported)
            Assert.Ignore("no AVX-512 here: the fast widening is not used");
        var all = new ushort[65536];
        for (int i = 0; i < all.Length; i++)
            all[i] = (ushort)i;
        // Every window of 32 consecutive bit patterns, at every alignment of 8, crosses each boundary
        // between classes (zero, subnormal, normal, infinity, NaN) of both signs.
        var window = new ushort[32];
        for (int start = 0; start + 32 <= all.Length; start += 8)
        {
            Array.Copy(all, start, window, 0, 32);
            var v = System.Runtime.Intrinsics.Vector512.Create(window);
            bool normal = window.All(b => (b & 0x7C00) is not 0 and not 0x7C00);
            Assert.That(HalfTable.AllNormal(v), Is.EqualTo(normal), $"window at 0x{start:X4}");
            if (!normal)
                continue;
            var lower = HalfTable.WidenNormal(System.Runtime.Intrinsics.Vector512.GetLower(v));
            var upper = HalfTable.WidenNormal(System.Runtime.Intrinsics.Vector512.GetUpper(v));
            for (int k = 0; k < 32; k++)
            {
                float expected = (float)BitConverter.UInt16BitsToHalf(window[k]);
                float actual = k < 16 ? lower[k] : upper[k - 16];
                Assert.That(BitConverter.SingleToInt32Bits(actual), Is.EqualTo(BitConverter.SingleToInt32Bits(expected)), $"0x{window[k]:X4}");
            }
        }
        // WidenHalves over the whole range: fast path where it applies, exact fallback elsewhere.
        var widened = new float[all.Length];
        fixed (ushort* src = all)
        fixed (float* dst = widened)
            VecDot.WidenHalves(src, dst, all.Length);
        for (int i = 0; i < all.Length; i++)
        {
            float expected = (float)BitConverter.UInt16BitsToHalf(all[i]);
            if (float.IsNaN(expected))
                Assert.That(float.IsNaN(widened[i]), Is.True, $"0x{i:X4} is NaN");
            else
                Assert.That(BitConverter.SingleToInt32Bits(widened[i]), Is.EqualTo(BitConverter.SingleToInt32Bits(expected)), $"0x{i:X4}");
        }
    }

    /// <summary>
    /// The 4-row kernels give each row exactly (bit for bit) what the one-row kernel gives it — the
    /// property exact speculative verification rests on.
    /// </summary>
    [TestCase(GgmlType.F16, 64)]
    [TestCase(GgmlType.F16, 1000)]
    [TestCase(GgmlType.Q8_0, 32)]
    [TestCase(GgmlType.Q8_0, 2048 + 32)]
    [TestCase(GgmlType.Q4_0, 32 * 4)]
    [TestCase(GgmlType.Q4_0, 32 * 7)]
    [TestCase(GgmlType.Q4_0, 2048 + 96)]
    public void Four_row_kernels_equal_the_one_row_kernel_bit_for_bit(GgmlType type, int cols)
    {
        if (!VecDot.HasRows4(type))
            Assert.Ignore($"no 4-row {type} kernel on this CPU");
        using var d = Make(type, rows: 3, cols, n: 4, seed: cols + 5);
        if (type == GgmlType.F16)
        {
            // zeros and subnormals in some vectors, so both widening paths run
            for (int r = 0; r < d.Rows; r++)
            {
                var h = (ushort*)(d.W + r * d.RowBytes);
                for (int i = 0; i < cols; i += 97)
                    h[i] = (ushort)(i % 2 == 0 ? 0 : 0x0003);
            }
        }
        var four = new float[4];
        sbyte** q = stackalloc sbyte*[4];
        float** dd = stackalloc float*[4];
        float** ss = stackalloc float*[4];
        fixed (float* x = d.X)
        fixed (float* y = four)
        {
            for (int r = 0; r < d.Rows; r++)
            {
                byte* w = d.W + r * d.RowBytes;
                if (type == GgmlType.F16)
                    VecDot.F16Rows4((ushort*)w, x, x + cols, x + 2 * cols, x + 3 * cols, cols, y);
                else if (type == GgmlType.Q4_0)
                {
                    for (int i = 0; i < 4; i++)
                    {
                        q[i] = d.Q.Q(i);
                        dd[i] = d.Q.D(i);
                        ss[i] = d.Q.ScaledSums(i);
                    }
                    VecDot.Q4_0Rows4(w, q, dd, ss, cols / 32, y);
                }
                else
                    VecDot.Q8_0Rows4(w, d.Q.Q(0), d.Q.Q(1), d.Q.Q(2), d.Q.Q(3), d.Q.D(0), d.Q.D(1), d.Q.D(2), d.Q.D(3), cols / 32, y);
                for (int i = 0; i < 4; i++)
                {
                    float one = MatMul.Dot(type, w, cols, x + i * cols, type == GgmlType.F16 ? null : d.Q, i);
                    Assert.That(BitConverter.SingleToInt32Bits(four[i]), Is.EqualTo(BitConverter.SingleToInt32Bits(one)), $"weight row {r}, activation row {i}");
                }
            }
        }
    }

    /// <summary>
    /// The vector RoPE against the scalar reference, bit for bit: the same two multiplies and one add or
    /// subtract per value, so no tolerance. Both styles, whole and partial rotations (Phi's rotated dims
    /// below the head size), pair counts the vector path takes and ones it leaves to the scalar loop.
    /// </summary>
    [TestCase(false, 12, 64, 32)]
    [TestCase(true, 12, 64, 32)]
    [TestCase(false, 4, 128, 64)]
    [TestCase(true, 4, 128, 64)]
    [TestCase(false, 3, 96, 16)]
    [TestCase(true, 3, 96, 16)]
    [TestCase(false, 2, 80, 40)]
    [TestCase(true, 2, 80, 40)]
    [TestCase(false, 2, 40, 12)]
    public void RopeVectorMatchesScalar(bool neox, int heads, int headDim, int pairs)
    {
        var rng = new Random(heads * 1000 + headDim + pairs + (neox ? 7 : 0));
        for (int position = 0; position < 40; position += 13)
        {
            var cos = new float[pairs];
            var sin = new float[pairs];
            for (int i = 0; i < pairs; i++)
            {
                double angle = position * Math.Pow(10000, -2.0 * i / (2 * pairs));
                (cos[i], sin[i]) = ((float)Math.Cos(angle), (float)Math.Sin(angle));
            }
            var x = new float[heads * headDim];
            for (int i = 0; i < x.Length; i++)
                x[i] = (float)(rng.NextDouble() * 8 - 4);
            x[0] = 0f;
            x[1] = -0f;
            var expected = (float[])x.Clone();
            Rope.RopeF32Scalar(expected, heads, headDim, neox, cos, sin);
            Rope.RopeF32(x, heads, headDim, neox, cos, sin);
            for (int i = 0; i < x.Length; i++)
                Assert.That(BitConverter.SingleToInt32Bits(x[i]), Is.EqualTo(BitConverter.SingleToInt32Bits(expected[i])),
                    $"value {i} at position {position}: {x[i]} vs {expected[i]}");
        }
    }
}
