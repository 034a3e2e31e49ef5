using System.Runtime.InteropServices;
using Engine.Backends.Cpu;
using Engine.Backends.Cpu.Kernels;
using Engine.Quantization;
using Engine.Tensors;

namespace Engine.Tests;

/// <summary>
/// The native CPU kernels (kernels/cpu) against the C# kernels they replace: bit for bit, since they
/// do the same float operations in the same order. CI builds the library and must use it; elsewhere
/// the tests are skipped when it is absent or the CPU lacks AVX-512 VNNI.
/// </summary>
public unsafe class NativeKernelTests
{
    internal static void RequireNative()
    {
        if (NativeKernels.Available)
            return;
        if (SharedData.IsCi && Environment.GetEnvironmentVariable("ENGINE_NATIVE") != "0" && System.Runtime.Intrinsics.X86.Avx512F.IsSupported)
            Assert.Fail($"CI builds the native CPU kernels and this CPU can run them, but they are not used: {NativeKernels.Status}");
        Assert.Ignore($"native CPU kernels not in use: {NativeKernels.Status}");
    }

    /// <summary><paramref name="rows"/> rows of <paramref name="cols"/> uniform values in [-1, 1) quantized to <paramref name="type"/>, in native memory (the caller frees it).</summary>
    internal static byte* RandomRows(GgmlType type, int cols, int rows, Random rng)
    {
        long rowBytes = GgmlTypeInfo.RowBytes(type, cols);
        var w = (byte*)NativeMemory.Alloc((nuint)(rowBytes * rows));
        var row = new float[cols];
        for (int r = 0; r < rows; r++)
        {
            for (int i = 0; i < cols; i++)
                row[i] = (float)(rng.NextDouble() * 2 - 1);
            Quantize.Row(type, row, new Span<byte>(w + r * rowBytes, (int)rowBytes));
        }
        return w;
    }

    [TestCase(GgmlType.Q6_K, 8)]
    [TestCase(GgmlType.Q6_K, 72)]
    [TestCase(GgmlType.Q4_0, 1)]
    [TestCase(GgmlType.Q4_0, 3)]
    [TestCase(GgmlType.Q4_0, 24)]
    [TestCase(GgmlType.Q8_0, 24)]
    [TestCase(GgmlType.Q4_K, 8)]
    [TestCase(GgmlType.Q4_K, 72)]
    [TestCase(GgmlType.Q5_K, 8)]
    [TestCase(GgmlType.Q5_K, 72)]
    [TestCase(GgmlType.Q8_0, 3)]
    [TestCase(GgmlType.Q5_1, 65)]
    public void Native_matrix_kernels_equal_the_CSharp_kernels_bit_for_bit(GgmlType type, int blocks)
    {
        RequireNative();
        int block = GgmlTypeInfo.Layout(type)!.Value.BlockSize;
        int cols = blocks * 32;
        if (cols % block != 0)
            cols = (cols + block - 1) / block * block;
        blocks = cols / 32;
        const int rows = 24, n = 16; // three calls' worth of the 8-row codes kernels, one call of the direct row loop
        var rng = new Random(cols);
        long rowBytes = GgmlTypeInfo.RowBytes(type, cols);
        var w = RandomRows(type, cols, rows, rng);
        try
        {
            var x = new float[n * cols];
            for (int i = 0; i < x.Length; i++)
                x[i] = (float)(rng.NextDouble() * 2 - 1) * (i % 41 == 0 ? 6 : 1);
            var qx = new QuantizedActivations();
            qx.Quantize(x, n, cols, ActivationBlock.Q8_0);
            qx.Interleave();
            var decoded = new DecodedRows();
            decoded.Decode(new TensorView("w", type, [cols, rows], w, rowBytes * rows), 0, rows);
            bool sixteen = decoded.SubBlock == 16;

            var expected = new float[rows * n]; // [weight row][activation row], from two 4-row C# calls
            var tile = new float[4 * n];
            fixed (float* t = tile)
            {
                for (int o = 0; o < rows; o += 4)
                {
                    if (sixteen)
                        Gemm.Codes16x4x2<VnniIsa>(decoded.Codes(o), decoded.Cols, decoded.Scales(o), decoded.Biases(o), decoded.SubBlocksPerRow, blocks, qx, 0, t);
                    else
                        Gemm.Codes32x4x2<VnniIsa>(decoded.Codes(o), decoded.Cols, decoded.Scales(o), decoded.Biases(o), decoded.SubBlocksPerRow, blocks, qx, 0, t);
                    Array.Copy(tile, 0, expected, o * n, 4 * n);
                }
            }
            var y = new float[n * rows]; // [activation row][weight row]
            fixed (float* yp = y)
            {
                for (int o = 0; o < rows; o += 8)
                {
                    if (sixteen)
                    {
                        NativeKernels.engine_codes16_8x16(decoded.Codes(o), decoded.Cols, decoded.Scales(o), decoded.Biases(o), decoded.SubBlocksPerRow, blocks,
                            qx.InterleavedQ(0), qx.InterleavedQ(1), qx.InterleavedD(0), qx.InterleavedD(1),
                            qx.InterleavedScaledSums16(0), qx.InterleavedScaledSums16(1), yp + o, rows);
                    }
                    else
                    {
                        NativeKernels.engine_codes32_8x16(decoded.Codes(o), decoded.Cols, decoded.Scales(o), decoded.Biases(o), decoded.SubBlocksPerRow, blocks,
                            qx.InterleavedQ(0), qx.InterleavedQ(1), qx.InterleavedD(0), qx.InterleavedD(1),
                            qx.InterleavedScaledSums32(0), qx.InterleavedScaledSums32(1), yp + o, rows);
                    }
                }
            }
            AssertEqual(y, "native");
            if (NativeKernels.HasDirect(type))
            {
                // the kernel that reads the blocks as the file holds them: the K-quants against the same C#
                // result, Q4_0, Q8_0 and Q6_K against the plain reference of their exact-offset arithmetic
                Array.Clear(y);
                fixed (float* yp = y)
                    NativeKernels.Direct(type, w, rowBytes, rows, cols, qx, 0, yp, rows);
                if (type is GgmlType.Q4_0 or GgmlType.Q8_0 or GgmlType.Q6_K)
                {
                    var decodedForm = (float[])expected.Clone();
                    for (int o = 0; o < rows; o++)
                    {
                        for (int r = 0; r < n; r++)
                            expected[o * n + r] = MatMul.ExactOffsetReference(type, w + o * rowBytes, qx, r, cols);
                    }
                    // the two forms agree to float rounding: a few ulps of the sum's largest terms, measured
                    // against the largest |y| (the products are sums of 32-value blocks whose terms reach ~|y|)
                    float scale = decodedForm.Max(MathF.Abs);
                    for (int i = 0; i < expected.Length; i++)
                        Assert.That(expected[i], Is.EqualTo(decodedForm[i]).Within(scale * 1e-5f), $"reference vs decoded form, element {i}");
                }
                AssertEqual(y, $"native {type} from its blocks");
            }

            void AssertEqual(float[] actual, string kernel)
            {
                for (int o = 0; o < rows; o++)
                {
                    for (int r = 0; r < n; r++)
                    {
                        Assert.That(BitConverter.SingleToInt32Bits(actual[r * rows + o]), Is.EqualTo(BitConverter.SingleToInt32Bits(expected[o * n + r])),
                            $"weight row {o}, activation row {r}: {kernel} {actual[r * rows + o]}, C# {expected[o * n + r]}");
                    }
                }
            }
        }
        finally
        {
            NativeMemory.Free(w);
        }
    }

    /// <summary>
    /// Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K repacked sixteen rows at a time (<see cref="Repacked16"/>) through <see cref="MatMul.Rows"/>: the matrix
    /// kernel's groups and the row kernel's rows (21 activation rows: two groups of 8, then 5 left to the rows),
    /// over the whole matrix and over a range that cuts its groups of 16, each output bit for bit the
    /// exact-offset reference (Q4_1, Q5_0, Q5_1, Q4_K, Q5_K: the decoded rows' scale-and-bias form, <see cref="DecodedRowsReference"/>) —
    /// the arithmetic of the direct kernel on the file's blocks, so repacking changes nothing but speed, and a
    /// row's result is the same whichever kernel computes it.
    /// </summary>
    [TestCase(GgmlType.Q4_0, 1, 0, 48)]
    [TestCase(GgmlType.Q4_0, 24, 0, 48)]
    [TestCase(GgmlType.Q4_0, 24, 5, 43)]
    [TestCase(GgmlType.Q4_0, 3, 17, 30)]
    [TestCase(GgmlType.Q8_0, 1, 0, 48)]
    [TestCase(GgmlType.Q8_0, 24, 0, 48)]
    [TestCase(GgmlType.Q8_0, 24, 5, 43)]
    [TestCase(GgmlType.Q8_0, 3, 17, 30)]
    [TestCase(GgmlType.Q4_K, 8, 0, 48)]
    [TestCase(GgmlType.Q4_K, 24, 5, 43)]
    [TestCase(GgmlType.Q4_K, 16, 17, 30)]
    [TestCase(GgmlType.Q4_1, 24, 5, 43)]
    [TestCase(GgmlType.Q5_0, 24, 5, 43)]
    [TestCase(GgmlType.Q5_0, 3, 17, 30)]
    [TestCase(GgmlType.Q5_1, 24, 0, 48)]
    [TestCase(GgmlType.Q5_1, 3, 17, 30)]
    [TestCase(GgmlType.Q5_K, 8, 0, 48)]
    [TestCase(GgmlType.Q5_K, 24, 5, 43)]
    [TestCase(GgmlType.Q5_K, 16, 17, 30)]
    [TestCase(GgmlType.Q6_K, 8, 0, 48)]
    [TestCase(GgmlType.Q6_K, 24, 5, 43)]
    [TestCase(GgmlType.Q6_K, 16, 17, 30)]
    public void Repacked_matrices_equal_their_direct_kernels_reference_bit_for_bit(GgmlType type, int blocks, int rowStart, int rowEnd)
    {
        RequireNative();
        int cols = 32 * blocks;
        const int rows = 48, n = 21;
        var rng = new Random(blocks * 31 + rowStart + (int)type);
        long rowBytes = GgmlTypeInfo.RowBytes(type, cols);
        var w = RandomRows(type, cols, rows, rng);
        var view = new TensorView("w", type, [cols, rows], w, rowBytes * rows);
        Assert.That(Repacked16.Applies(view), $"a 48-row {type} matrix is repacked under the native kernels");
        using var packed = Repacked16.Pack(view);
        try
        {
            var x = new float[n * cols];
            for (int i = 0; i < x.Length; i++)
                x[i] = (float)(rng.NextDouble() * 2 - 1) * (i % 37 == 0 ? 5 : 1);
            var qx = new QuantizedActivations();
            qx.Quantize(x, n, cols, ActivationBlock.Q8_0);
            qx.Interleave();
            Assert.That(qx.Groups, Is.EqualTo(2), "two whole groups for the matrix kernel, five rows for the row kernel");
            var decoded = new DecodedRows();
            decoded.Decode(view, 0, rows);
            var y = new float[n * rows];
            Array.Fill(y, float.NaN);
            MatMul.Rows(view, packed, x, qx, qx, null, n, y, rowStart, rowEnd);
            for (int r = 0; r < n; r++)
            {
                for (int o = 0; o < rows; o++)
                {
                    float actual = y[r * rows + o];
                    if (o < rowStart || o >= rowEnd)
                    {
                        Assert.That(float.IsNaN(actual), $"row {r}, output {o} lies outside the range and must stay unwritten");
                        continue;
                    }
                    float expected = type is not (GgmlType.Q4_0 or GgmlType.Q8_0 or GgmlType.Q6_K) ? DecodedRowsReference(decoded, o, qx, r)
                        : MatMul.ExactOffsetReference(type, w + o * rowBytes, qx, r, cols);
                    Assert.That(BitConverter.SingleToInt32Bits(actual), Is.EqualTo(BitConverter.SingleToInt32Bits(expected)),
                        $"activation row {r} ({(r < 16 ? "matrix" : "row")} kernel), weight row {o}: {actual} vs reference {expected}");
                }
            }
        }
        finally
        {
            NativeMemory.Free(w);
        }
    }

    /// <summary>
    /// The float matrix kernels' whole panels of 16 activation rows (<c>engine_float_outer</c> under the native kernels,
    /// <see cref="Gemm.F32Outer8x16"/> otherwise): every output one chain of fused multiply-adds over the columns in order,
    /// the weight widened exactly — checked bit for bit against that chain written plainly, with columns that leave a
    /// partial 64-column tile (80), columns the native kernel refuses (24: the C# path), one, two and three whole panels
    /// (the native kernel runs them alone, as a pair, as a pair and one), ranges that start and end
    /// inside a group of 8 weight rows, and a last panel of 8 rows beside two whole ones (that panel and the weight
    /// rows past the range's last whole group of 8 go through another kernel, left to the float tests elsewhere). Not only under the native kernels: the C# path owes the same bits.
    /// </summary>
    [TestCase(GgmlType.F16, 80, 16, 0, 48)]
    [TestCase(GgmlType.F16, 80, 40, 5, 43)]
    [TestCase(GgmlType.F16, 768, 16, 16, 48)]
    [TestCase(GgmlType.BF16, 80, 40, 0, 48)]
    [TestCase(GgmlType.F32, 80, 40, 3, 29)]
    [TestCase(GgmlType.F16, 24, 32, 0, 48)]
    [TestCase(GgmlType.F16, 96, 56, 8, 40)]
    public void Float_matrix_panels_are_one_fma_chain_per_output(GgmlType type, int cols, int n, int rowStart, int rowEnd)
    {
        const int rows = 48;
        var rng = new Random(cols * 7 + n + (int)type);
        long rowBytes = GgmlTypeInfo.RowBytes(type, cols);
        var w = RandomRows(type, cols, rows, rng);
        try
        {
            var view = new TensorView("w", type, [cols, rows], w, rowBytes * rows);
            var x = new float[n * cols];
            for (int i = 0; i < x.Length; i++)
                x[i] = (float)(rng.NextDouble() * 2 - 1);
            using var panels = new FloatPanels();
            panels.Pack(x, n, cols);
            var y = new float[n * rows];
            Array.Fill(y, float.NaN);
            MatMul.Rows(view, null, x, null, null, panels, n, y, rowStart, rowEnd);
            var widened = new float[cols];
            for (int o = 0; o < rows; o++)
            {
                Engine.Quantization.Dequantize.Row(type, new ReadOnlySpan<byte>(w + o * rowBytes, (int)rowBytes), widened);
                for (int r = 0; r < n; r++)
                {
                    float actual = y[r * rows + o];
                    if (o < rowStart || o >= rowEnd)
                    {
                        Assert.That(float.IsNaN(actual), $"row {r}, output {o} lies outside the range and must stay unwritten");
                        continue;
                    }
                    if (r >= n / FloatPanels.Rows16 * FloatPanels.Rows16 || o >= rowStart + (rowEnd - rowStart) / 8 * 8)
                        continue; // the last panel of 8, or weight rows past the range's last whole group of 8
                    float expected = 0;
                    for (int k = 0; k < cols; k++)
                        expected = MathF.FusedMultiplyAdd(widened[k], x[r * cols + k], expected);
                    Assert.That(BitConverter.SingleToInt32Bits(actual), Is.EqualTo(BitConverter.SingleToInt32Bits(expected)),
                        $"activation row {r}, weight row {o}: {actual} vs the chain {expected}");
                }
            }
        }
        finally
        {
            NativeMemory.Free(w);
        }
    }

    /// <summary>
    /// What the decoded-rows kernels (and the direct Q4_K kernel) compute for weight row <paramref name="o"/> and activation
    /// row <paramref name="r"/> (Q8_0 activations), written plainly: per sub-block of 32, acc = fma(float(Σ code·q),
    /// scale·dx, fma(bias, dx·Σq, acc)) in order.
    /// </summary>
    private static float DecodedRowsReference(DecodedRows decoded, int o, QuantizedActivations qx, int r)
    {
        byte* codes = decoded.Codes(o);
        float* scales = decoded.Scales(o), biases = decoded.Biases(o);
        sbyte* q = qx.Q(r);
        float* dx = qx.D(r), xs = qx.ScaledSums(r);
        float acc = 0;
        for (int b = 0; b < decoded.Cols / 32; b++)
        {
            int sum = 0;
            for (int j = 0; j < 32; j++)
                sum += codes[32 * b + j] * q[32 * b + j];
            acc = MathF.FusedMultiplyAdd(sum, scales[b] * dx[b], MathF.FusedMultiplyAdd(biases[b], xs[b], acc));
        }
        return acc;
    }
}
