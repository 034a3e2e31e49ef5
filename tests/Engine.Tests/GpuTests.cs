using System.Runtime.InteropServices;
using Engine.Api;
using Engine.Backends;
using Engine.Backends.Cpu.Kernels;
using Engine.Cuda;
using Engine.Sampling;
using Engine.Tensors;
using CpuRmsNorm = Engine.Backends.Cpu.Kernels.RmsNorm;

namespace Engine.Tests;

/// <summary>
/// The GPU parity suite: every kernel of kernels/*.cu against its C# reference on random inputs of
/// awkward sizes, then the whole forward pass on the CUDA backend against the double-precision reference
/// and the CPU backend, and greedy decoding of stories260K against expected.md. Where no CUDA device
/// exists the tests are ignored with the reason; with REQUIRE_GPU=1 (the device script sets it) they
/// fail instead, so a run on a GPU machine cannot pass by skipping.
/// </summary>
/// <remarks>
/// Tolerances. u = 2^-24 is float32's unit roundoff. A sum of n products computed in two different
/// orders (the kernels split it across lanes and a tree, the references go left to right) differs by at
/// most 2·γ_n·Σ|terms| with γ_n ≈ n·u (Higham, "Accuracy and Stability of Numerical Algorithms", §3.1);
/// the gemv and attention checks use that bound computed from the inputs, so they cannot pass a wrong
/// kernel (a swapped nibble or scale moves a result by a sizeable part of Σ|terms|) and cannot fail a
/// right one. Elementwise kernels differ from their references only where the GPU fuses a multiply-add
/// or its expf rounds differently: a few ulps.
/// </remarks>
[Category("Gpu")]
[NonParallelizable]
public class GpuTests : GpuSuite
{
    protected override GpuDevice OpenDevice()
    {
        var devices = CudaDriver.Discover(out string reason);
        if (devices.Count == 0)
        {
            string message = $"no CUDA device: {reason}";
            if (Environment.GetEnvironmentVariable("REQUIRE_GPU") == "1")
                Assert.Fail(message + " (REQUIRE_GPU=1)");
            Assert.Ignore(message);
        }
        return GpuDevice.Open(0);
    }
}

/// <summary>
/// The same suite on the kernel emulator (kernels/host/simt.cpp: kernels/*.cu compiled for the host,
/// blocks run one after another, threads as fibers meeting at barriers and shuffles): the kernels'
/// logic and everything above them — launchers, memory pool, backend — checked in CI without a GPU.
/// Timing-dependent parts (CUDA graphs, cuBLAS) need a GPU and are ignored here.
/// </summary>
[Category("GpuEmulator")]
[NonParallelizable]
public class GpuEmulatorTests : GpuSuite
{
    protected override GpuDevice OpenDevice()
    {
        if (!GpuDevice.EmulatorAvailable(out string reason))
        {
            if (SharedData.IsCi)
                Assert.Fail(reason + " — required under CI");
            Assert.Ignore(reason);
        }
        return GpuDevice.OpenEmulator();
    }
}

public abstract partial class GpuSuite
{
    private const double U = 1.0 / (1 << 24);
    private GpuDevice? _device;

    protected abstract GpuDevice OpenDevice();

    [OneTimeSetUp]
    public void Open()
    {
        _device = OpenDevice();
        using var blas = CuBlas.TryCreate(_device);
        TestContext.Progress.WriteLine($"device: {_device.Info}; cuBLAS: {CuBlas.Status}");
    }

    [OneTimeTearDown]
    public void Close() => _device?.Dispose();

    private GpuDevice Device => _device!;

    /// <summary>Ignores a test that needs a real GPU (CUDA graphs, timing) on the emulator.</summary>
    private void RequireGpu(string what)
    {
        if (Device.IsEmulator)
            Assert.Ignore($"{what} needs a GPU");
    }

    private static float[] RandomFloats(Random rng, int n, double scale = 2) =>
        Enumerable.Range(0, n).Select(_ => (float)((rng.NextDouble() * 2 - 1) * scale)).ToArray();

    /// <summary>
    /// Weight rows in <paramref name="type"/>'s format with random bits everywhere except the half-precision
    /// scales, which get moderate finite values: every quant, scale and min pattern occurs.
    /// </summary>
    internal static byte[] RandomWeights(GgmlType type, int rows, int cols, Random rng)
    {
        long rowBytes = GgmlTypeInfo.RowBytes(type, cols);
        var data = new byte[rowBytes * rows];
        void Half(int at, double magnitude) => BitConverter.TryWriteBytes(data.AsSpan(at, 2), (Half)((rng.NextDouble() * 2 - 1) * magnitude));
        switch (type)
        {
            case GgmlType.F32:
                MemoryMarshal.Cast<byte, float>(data.AsSpan()).Fill(0);
                RandomFloats(rng, rows * cols).CopyTo(MemoryMarshal.Cast<byte, float>(data.AsSpan()));
                break;
            case GgmlType.F16:
                for (int i = 0; i < rows * cols; i++)
                    Half(2 * i, 2);
                break;
            case GgmlType.BF16:
                for (int i = 0; i < rows * cols; i++)
                    BitConverter.TryWriteBytes(data.AsSpan(2 * i, 2), Quantization.Quantize.ToBF16((float)(rng.NextDouble() * 4 - 2)));
                break;
            default:
                rng.NextBytes(data);
                var (blockValues, blockBytes) = GgmlTypeInfo.Layout(type)!.Value;
                for (long b = 0; b < data.Length / blockBytes; b++)
                {
                    int at = (int)(b * blockBytes);
                    switch (type)
                    {
                        case GgmlType.Q8_0: Half(at, 0.05); break;
                        case GgmlType.Q4_0: Half(at, 0.3); break;
                        case GgmlType.Q4_K: Half(at, 0.02); Half(at + 2, 0.02); break;
                        case GgmlType.Q6_K: Half(at + 208, 0.003); break;
                        default: throw new NotSupportedException(type.ToString());
                    }
                }
                break;
        }
        return data;
    }

    public static IEnumerable<GgmlType> WeightTypes() => Cuda.Kernels.WeightFormats.Supported;

    [TestCase(1, 1)]
    [TestCase(3, 31)]
    [TestCase(2, 33)]
    [TestCase(5, 1000)]
    [TestCase(7, 4097)]
    [TestCase(1, 8192)]
    public void RmsNorm_matches_the_cpu_reference(int rows, int cols)
    {
        // The kernel sums squares as a tree across threads, the reference in vector lanes: for n terms the
        // two sums differ by about log2(n) + n/32 roundings of 2^-24 relative, so 1e-5 relative to each
        // row's largest output is ~10× the worst case for n = 8192.
        var rng = new Random(rows * 10_000 + cols);
        var x = RandomFloats(rng, rows * cols);
        var w = Enumerable.Range(0, cols).Select(_ => (float)(rng.NextDouble() + 0.5)).ToArray();
        const float eps = 1e-5f;
        var expected = new float[x.Length];
        CpuRmsNorm.RmsNormF32(x, w, eps, expected, rows);

        using var dx = Device.Upload<float>(x);
        using var dw = Device.Upload<float>(w);
        using var dy = Device.Allocate<float>(x.Length);
        Cuda.Kernels.RmsNorm.RmsNormF32(Device, dx, dw, dy, rows, cols, eps);
        var actual = Device.Download<float>(dy);
        for (int r = 0; r < rows; r++)
        {
            float scale = expected.AsSpan(r * cols, cols).ToArray().Max(MathF.Abs);
            for (int c = 0; c < cols; c++)
                Assert.That(actual[r * cols + c], Is.EqualTo(expected[r * cols + c]).Within(1e-5f * scale), $"row {r} col {c}");
        }

        // In place (y = x), as the forward pass uses it.
        Cuda.Kernels.RmsNorm.RmsNormF32(Device, dx, dw, dx, rows, cols, eps);
        Assert.That(Device.Download<float>(dx)[^1], Is.EqualTo(expected[^1]).Within(1e-5f * MathF.Abs(expected[^1]) + 1e-6f));
    }

    [Test]
    public void Launchers_check_shapes_before_launching()
    {
        using var small = Device.Allocate<float>(8);
        Assert.Throws<ArgumentException>(() => Cuda.Kernels.RmsNorm.RmsNormF32(Device, small, small, small, 2, 8, 1e-5f));
        Assert.Throws<ArgumentOutOfRangeException>(() => Cuda.Kernels.RmsNorm.RmsNormF32(Device, small, small, small, 0, 8, 1e-5f));
        using var bytes = Device.Allocate<byte>(18);
        Assert.Throws<ArgumentException>(() => Cuda.Kernels.Gemv.Run(Device, GgmlType.Q4_0, bytes, 2, 32, small, 1, small), "two rows need 36 bytes");
        Assert.Throws<ArgumentException>(() => Cuda.Kernels.Gemv.Run(Device, GgmlType.Q4_0, bytes, 1, 30, small, 1, small), "not whole blocks");
        Assert.Throws<ArgumentOutOfRangeException>(() => Cuda.Kernels.Gemv.Run(Device, GgmlType.Q4_0, bytes, 1, 32, small, 9, small));
    }

    [Test]
    public void Get_rows_matches_the_cpu_reference([ValueSource(nameof(WeightTypes))] GgmlType type)
    {
        int qk = Cuda.Kernels.WeightFormats.ValuesPerBlock(type);
        int cols = qk * (qk < 32 ? 9 : 3), tableRows = 11;
        var rng = new Random(17 + (int)type);
        var table = RandomWeights(type, tableRows, cols, rng);
        int[] ids = [3, 0, 10, 3, 7];
        var expected = new float[ids.Length * cols];
        GetRows.Rows(type, table, cols, ids, expected);

        using var dt = Device.Upload<byte>(table);
        using var di = Device.Upload<int>(ids);
        using var dd = Device.Allocate<float>(expected.Length);
        Cuda.Kernels.GetRows.Rows(Device, type, dt, tableRows, cols, di, ids.Length, dd);
        var actual = Device.Download<float>(dd);
        // Both decode d·q (or d·sc·q − dmin·m) in float32; the GPU may fuse the last multiply-add: 2 ulps.
        for (int i = 0; i < expected.Length; i++)
            Assert.That(actual[i], Is.EqualTo(expected[i]).Within(4 * U * Math.Abs(expected[i]) + 1e-30), $"value {i % cols} of row {i / cols}");
    }

    [Test]
    public void Gemv_matches_the_cpu_reference([ValueSource(nameof(WeightTypes))] GgmlType type, [Values(1, 3, 8)] int ncols)
    {
        int qk = Cuda.Kernels.WeightFormats.ValuesPerBlock(type);
        int cols = qk * (qk < 32 ? 37 : 5), rows = 67; // 67 rows: a partial block of 4 warps
        var rng = new Random(ncols * 100 + (int)type);
        var w = RandomWeights(type, rows, cols, rng);
        var x = RandomFloats(rng, ncols * cols);
        var expected = new float[ncols * rows];
        Gemv.Run(type, w, rows, cols, x, ncols, expected);

        using var dw = Device.Upload<byte>(w);
        using var dx = Device.Upload<float>(x);
        using var dy = Device.Allocate<float>(expected.Length);
        Cuda.Kernels.Gemv.Run(Device, type, dw, rows, cols, dx, ncols, dy);
        var actual = Device.Download<float>(dy);

        var row = new float[cols];
        long rowBytes = GgmlTypeInfo.RowBytes(type, cols);
        for (int r = 0; r < rows; r++)
        {
            Quantization.Dequantize.Row(type, w.AsSpan((int)(r * rowBytes), (int)rowBytes), row);
            for (int c = 0; c < ncols; c++)
            {
                double magnitude = 0;
                for (int k = 0; k < cols; k++)
                    magnitude += Math.Abs((double)row[k] * x[c * cols + k]);
                double bound = (2.0 * cols + 4) * U * magnitude; // two summation orders, plus a dequantization ulp
                Assert.That(actual[c * rows + r], Is.EqualTo(expected[c * rows + r]).Within(bound), $"row {r}, activation row {c}");
            }
        }
    }

    [Test]
    public void Gemv_rows_do_not_depend_on_the_batch([ValueSource(nameof(WeightTypes))] GgmlType type)
    {
        // gemv_x8's arithmetic for each activation row is gemv's: verification reproduces decoding bit for bit.
        int qk = Cuda.Kernels.WeightFormats.ValuesPerBlock(type);
        int cols = qk * (qk < 32 ? 12 : 4), rows = 40;
        var rng = new Random(5 + (int)type);
        using var dw = Device.Upload<byte>(RandomWeights(type, rows, cols, rng));
        var x = RandomFloats(rng, 8 * cols);
        using var dx = Device.Upload<float>(x);
        using var all = Device.Allocate<float>(8 * rows);
        Cuda.Kernels.Gemv.Run(Device, type, dw, rows, cols, dx, 8, all);
        var batched = Device.Download<float>(all);
        using var one = Device.Allocate<float>(rows);
        for (int c = 0; c < 8; c++)
        {
            Cuda.Kernels.Gemv.Run(Device, type, dw, rows, cols, dx.Span.Slice((long)c * cols, cols), 1, one);
            Assert.That(Device.Download<float>(one), Is.EqualTo(batched.AsSpan(c * rows, rows).ToArray()), $"activation row {c}");
        }
    }

    [Test]
    public void Dequantize_to_f16_matches_the_cpu_reference([ValueSource(nameof(WeightTypes))] GgmlType type)
    {
        int qk = Cuda.Kernels.WeightFormats.ValuesPerBlock(type);
        int cols = qk * (qk < 32 ? 7 : 2), rows = 9;
        var w = RandomWeights(type, rows, cols, new Random(23 + (int)type));
        var expected = new Half[rows * cols];
        DequantizeF16.Run(type, w, rows, cols, expected);
        using var dw = Device.Upload<byte>(w);
        using var dd = Device.Allocate<Half>(expected.Length);
        Cuda.Kernels.Dequantize.ToF16(Device, type, dw, rows, cols, dd);
        var actual = Device.Download<Half>(dd);
        // The float values agree to 2 ulps (get_rows); rounding to half then agrees to one half-ulp (2^-11).
        for (int i = 0; i < expected.Length; i++)
            Assert.That((double)actual[i], Is.EqualTo((double)expected[i]).Within(Math.Abs((double)expected[i]) / 1024 + 1e-7), $"value {i}");

        var x = RandomFloats(new Random(3), 1000);
        var halves = new Half[x.Length];
        DequantizeF16.ConvertF32F16(x, halves);
        using var dx = Device.Upload<float>(x);
        using var dh = Device.Allocate<Half>(x.Length);
        Cuda.Kernels.Dequantize.ConvertF32F16(Device, dx, dh, x.Length);
        Assert.That(Device.Download<Half>(dh), Is.EqualTo(halves), "round to nearest even on both sides");
    }

    [TestCase(false, 16, 8, 3)]
    [TestCase(true, 16, 8, 3)]
    [TestCase(true, 128, 64, 5)]
    [TestCase(false, 64, 16, 2)] // partial rotation: 16 of 64 dims rotated
    public void Rope_matches_the_cpu_reference(bool neox, int headDim, int pairs, int heads)
    {
        var rng = new Random(headDim + pairs);
        int n = 7;
        var x = RandomFloats(rng, n * heads * headDim);
        int[] positions = [0, 1, 2, 77, 500, 4095, 70000];
        var invFreq = Enumerable.Range(0, pairs).Select(i => Math.Pow(10000.0, -2.0 * i / (2 * pairs))).ToArray();
        var expected = (float[])x.Clone();
        for (int r = 0; r < n; r++)
        {
            var cos = invFreq.Select(f => (float)Math.Cos(positions[r] * f)).ToArray();
            var sin = invFreq.Select(f => (float)Math.Sin(positions[r] * f)).ToArray();
            Rope.RopeF32(expected.AsSpan(r * heads * headDim, heads * headDim), heads, headDim, neox, cos, sin);
        }
        using var dx = Device.Upload<float>(x);
        using var dp = Device.Upload<int>(positions);
        using var df = Device.Upload<double>(invFreq);
        Cuda.Kernels.Rope.RopeF32(Device, dx, n, heads, headDim, dp, df, pairs, neox);
        var actual = Device.Download<float>(dx);
        // Same float cos/sin (both round the double angle's cosine once); x0·c − x1·s may be fused on the GPU: 2 ulps of the terms.
        for (int i = 0; i < x.Length; i++)
            Assert.That(actual[i], Is.EqualTo(expected[i]).Within(8 * U * 2 * 2 + 4 * U * Math.Abs(expected[i])), $"element {i}");
    }

    [Test]
    public void Elementwise_kernels_match_the_cpu_references()
    {
        var rng = new Random(9);
        int count = 1000 * 3 + 17;
        var gate = RandomFloats(rng, count, 8);
        var up = RandomFloats(rng, count, 3);
        var expected = new float[count];
        Activations.SwiGluF32(gate, up, expected);
        using var dg = Device.Upload<float>(gate);
        using var du = Device.Upload<float>(up);
        Cuda.Kernels.SwiGlu.SwiGluF32(Device, dg, du, dg, count);
        var actual = Device.Download<float>(dg);
        // expf and 1/(1+e) against TensorPrimitives.Sigmoid: a few ulps of the result.
        for (int i = 0; i < count; i++)
            Assert.That(actual[i], Is.EqualTo(expected[i]).Within(16 * U * Math.Abs(expected[i]) + 1e-30), $"swiglu {i}");

        var a = RandomFloats(rng, count);
        var b = RandomFloats(rng, count);
        var sum = (float[])a.Clone();
        Activations.AddF32(sum, b);
        using var da = Device.Upload<float>(a);
        using var db = Device.Upload<float>(b);
        Cuda.Kernels.Add.AddF32(Device, da, db, count);
        Assert.That(Device.Download<float>(da), Is.EqualTo(sum), "one rounding each side: identical");

        int cols = 37, rows = 5;
        var x = RandomFloats(rng, rows * cols);
        var bias = RandomFloats(rng, cols);
        var biased = (float[])x.Clone();
        Activations.AddBiasF32(biased, bias);
        using var dx = Device.Upload<float>(x);
        using var dbias = Device.Upload<float>(bias);
        Cuda.Kernels.Add.AddBiasF32(Device, dx, dbias, rows, cols);
        Assert.That(Device.Download<float>(dx), Is.EqualTo(biased));
    }

    [Test]
    public void ArgMax_picks_the_first_maximum_like_the_cpu()
    {
        int cols = 32000 + 13;
        var rng = new Random(4);
        var rows = new List<float[]>();
        var tie = RandomFloats(rng, cols);
        tie[100] = tie[31000] = 50; // tie: the first wins
        rows.Add(tie);
        var nan = RandomFloats(rng, cols);
        nan[5] = float.NaN;
        nan[cols - 1] = 9;
        rows.Add(nan);
        rows.Add(Enumerable.Repeat(float.NegativeInfinity, cols).ToArray());
        rows.Add(RandomFloats(rng, cols));
        var x = rows.SelectMany(r => r).ToArray();
        using var dx = Device.Upload<float>(x);
        using var dout = Device.Allocate<int>(rows.Count);
        Cuda.Kernels.ArgMax.ArgMaxF32(Device, dx, rows.Count, cols, dout);
        Assert.That(Device.Download<int>(dout), Is.EqualTo(rows.Select(r => Activations.ArgMaxF32(r)).ToArray()));
    }

    public static IEnumerable<TestCaseData> AttentionCases()
    {
        // (heads, kvHeads, headDim, blockSize, prefix, n, tree)
        yield return new TestCaseData(8, 4, 8, 32, 0, 1, false).SetName("attention: first token, head dim 8");
        yield return new TestCaseData(8, 2, 64, 16, 37, 1, false).SetName("attention: decode after 37, GQA 4:1");
        yield return new TestCaseData(32, 8, 128, 32, 3000, 1, false).SetName("attention: decode after 3000 (many splits)");
        yield return new TestCaseData(4, 4, 96, 32, 0, 45, false).SetName("attention: causal prefill of 45, head dim 96");
        yield return new TestCaseData(4, 1, 64, 32, 100, 13, true).SetName("attention: tree of 13 after 100, MQA");
        yield return new TestCaseData(2, 2, 256, 8, 70, 70, true).SetName("attention: tree of 70 (two mask words), head dim 256");
        yield return new TestCaseData(8, 4, 8, 32, 0, 17, false).SetName("attention: tiled prefill of 17 (a partial row block), head dim 8");
        yield return new TestCaseData(32, 8, 128, 16, 50, 33, false).SetName("attention: tiled prefill of 33 after 50, head dim 128");
        yield return new TestCaseData(4, 2, 64, 32, 7, 70, true).SetName("attention: tiled tree of 70 after 7");
    }

    /// <summary>
    /// The tensor-core prefill kernel (attention_tc.cu) against a double-precision reference that rounds
    /// as the kernel does: q·scale to binary16, the keys and values binary16 (the cache). What is left is
    /// the kernel's rounding of each probability to binary16 (relative 2^-11: with Σp = 1 the output
    /// moves by at most 2^-11·max|v|) and float32 sums of binary16 products (relative ~1e-5 here), so
    /// 2^-10·max|v| bounds the difference. Rows past a 64-row block, a prefix that ends mid-tile,
    /// GQA, scrambled blocks and a tree mask over two mask words are all in the cases.
    /// </summary>
    [TestCase(4, 2, 64, 16, 45, 70, false)]
    [TestCase(4, 1, 128, 32, 0, 17, false)]
    [TestCase(2, 2, 32, 8, 7, 70, true)]
    public void Tensor_core_prefill_attention_matches_the_reference(int heads, int kvHeads, int headDim, int blockSize, int prefix, int n, bool tree)
    {
        var layout = new KvLayout(Layers: 2, KvHeads: kvHeads, HeadDim: headDim, BlockSize: blockSize);
        int layer = 1, tokens = prefix + n;
        int blocks = (tokens + blockSize - 1) / blockSize + 2;
        var rng = new Random(7 * heads + prefix + n);
        var table = Enumerable.Range(0, blocks).OrderBy(_ => rng.Next()).Take((tokens + blockSize - 1) / blockSize).ToArray();
        var k = RandomFloats(rng, tokens * kvHeads * headDim).Select(f => (float)(Half)f).ToArray();
        var v = RandomFloats(rng, tokens * kvHeads * headDim).Select(f => (float)(Half)f).ToArray();
        var q = RandomFloats(rng, n * heads * headDim).Select(f => 3 * f).ToArray(); // peaked softmaxes as well as flat ones
        var mask = tree
            ? AttentionMask.FromParents(Enumerable.Range(0, n).Select(i => i == 0 ? -1 : rng.Next(-1, i)).ToArray())
            : AttentionMask.Causal;
        float scale = 1 / MathF.Sqrt(headDim);
        Assert.That(Cuda.Kernels.Attention.UsesTensorCores(Device, true, n, headDim, batchInvariant: false), "the case takes the tensor-core kernel");

        using var dcache = Device.Allocate<Half>(blocks * KvCacheKernels.BlockFloats(layout));
        Device.Clear(dcache.Span.Pointer, dcache.Span.Bytes);
        using var dk = Device.Upload<float>(k);
        using var dv = Device.Upload<float>(v);
        using var dt = Device.Upload<int>(table);
        Cuda.Kernels.KvCache.StoreKv(Device, dk, dv, tokens, dt, table.Length, 0, dcache.Span, blocks, layout, layer);
        using var dq = Device.Upload<float>(q);
        using var dmask = tree ? Device.Upload<ulong>(mask.Bits[..(n * mask.WordsPerRow)]) : null;
        using var dout = Device.Allocate<float>((long)n * heads * headDim);
        Cuda.Kernels.Attention.AttentionF32(Device, dq, n, heads, dcache.Span, blocks, layout, layer, dt, table.Length, prefix,
            dmask?.Span ?? default, tree ? mask.WordsPerRow : 0, scale, default, dout, batchInvariant: false, tensorCores: true);
        var actual = Device.Download<float>(dout);

        double maxV = v.Max(x => Math.Abs((double)x));
        int group = heads / kvHeads;
        for (int i = 0; i < n; i++)
        {
            for (int h = 0; h < heads; h++)
            {
                int kvh = h / group;
                var qh = Enumerable.Range(0, headDim).Select(d => (double)(float)(Half)(q[(i * heads + h) * headDim + d] * scale)).ToArray();
                var seen = Enumerable.Range(0, tokens).Where(t => t < prefix || (tree ? mask.Allows(i, t - prefix) : t - prefix <= i)).ToArray();
                var s = seen.Select(t => Enumerable.Range(0, headDim).Sum(d => qh[d] * k[(t * kvHeads + kvh) * headDim + d])).ToArray();
                double mx = s.Max(), sum = s.Sum(x => Math.Exp(x - mx));
                for (int d = 0; d < headDim; d++)
                {
                    double expected = 0;
                    for (int j = 0; j < seen.Length; j++)
                        expected += Math.Exp(s[j] - mx) / sum * v[(seen[j] * kvHeads + kvh) * headDim + d];
                    double got = actual[(i * heads + h) * headDim + d];
                    if (Math.Abs(got - expected) > Math.Pow(2, -10) * maxV)
                        Assert.Fail($"row {i}, head {h}, dim {d}: {got} vs {expected} (bound {Math.Pow(2, -10) * maxV:g3})");
                }
            }
        }
    }

    /// <summary>
    /// Sliding windows and soft-capped scores in every attention kernel — the tree kernel (decoding and
    /// exact verification), the tiled prefill, the split kernel for heads over 128, the tensor-core
    /// prefill — against the definition in double precision (<see cref="SlidingWindowTests.Reference"/>):
    /// windows inside the batch, trees deeper than the window. Float32 kernels: the CPU test's bound
    /// (float32 rounding of scores and sums); the tensor-core kernel rounds q·scale and the
    /// probabilities to binary16: 2^-10·max|v| as in its own test.
    /// </summary>
    [TestCase(4, 2, 16, 8, 40, 1, false, 7, 1.5f, "tree")]
    [TestCase(8, 2, 64, 16, 300, 1, false, 100, 0f, "tree")] // the window's prefix tiles staged for the whole GQA group
    [TestCase(4, 4, 24, 32, 100, 12, true, 4, 2f, "tree")]
    [TestCase(4, 4, 24, 32, 100, 12, true, 4, 2f, "prefill")]
    [TestCase(2, 1, 32, 16, 3, 40, false, 5, 0f, "prefill")]
    [TestCase(2, 1, 256, 16, 60, 3, false, 9, 1f, "split")]
    [TestCase(4, 2, 64, 16, 30, 70, false, 20, 2f, "tensor cores")]
    [TestCase(2, 2, 32, 8, 7, 40, true, 6, 0f, "tensor cores")]
    public void Every_attention_kernel_applies_the_window_and_the_soft_cap(int heads, int kvHeads, int headDim, int blockSize, int prefix, int n,
        bool tree, int window, float softCap, string kernel)
    {
        var layout = new KvLayout(Layers: 2, KvHeads: kvHeads, HeadDim: headDim, BlockSize: blockSize);
        int layer = 1, tokens = prefix + n, blocks = (tokens + blockSize - 1) / blockSize + 2;
        var rng = new Random(heads * 1000 + prefix + n + window);
        var table = Enumerable.Range(0, blocks).OrderBy(_ => rng.Next()).Take((tokens + blockSize - 1) / blockSize).ToArray();
        bool f16 = kernel == "tensor cores";
        var k = RandomFloats(rng, tokens * kvHeads * headDim).Select(x => f16 ? (float)(Half)x : x).ToArray();
        var v = RandomFloats(rng, tokens * kvHeads * headDim).Select(x => f16 ? (float)(Half)x : x).ToArray();
        var q = RandomFloats(rng, n * heads * headDim);
        var parents = tree ? Enumerable.Range(0, n).Select(i => i == 0 ? -1 : rng.Next(Math.Max(-1, i - 4), i)).ToArray() : null;
        var mask = parents is null ? AttentionMask.Causal : AttentionMask.FromParents(parents);
        var positions = SlidingWindowTests.Positions(prefix, n, parents);
        float scale = 1 / MathF.Sqrt(headDim);
        var sliding = new SlidingWindow();
        sliding.Set(window, positions, mask);
        var expected = SlidingWindowTests.Reference(q, k, v, n, heads, kvHeads, headDim, prefix, mask, positions, window, softCap, scale);

        bool batchInvariant = kernel == "tree";
        if (kernel == "tensor cores")
            Assert.That(Cuda.Kernels.Attention.UsesTensorCores(Device, true, n, headDim, batchInvariant), "the case takes the tensor-core kernel");
        if (kernel == "prefill")
            Assert.That(KvCacheKernels.UsesPrefillKernel(n, headDim, batchInvariant), "the case takes the tiled prefill kernel");
        using var dk = Device.Upload<float>(k);
        using var dv = Device.Upload<float>(v);
        using var dt = Device.Upload<int>(table);
        using var dq = Device.Upload<float>(q);
        var windowMask = sliding.Mask;
        using var dmask = tree ? Device.Upload<ulong>(windowMask.Bits[..(n * windowMask.WordsPerRow)]) : null;
        using var dstarts = Device.Upload<int>(sliding.Starts.ToArray());
        using var scratch = Device.Allocate<float>(KvCacheKernels.ScratchFloats(heads, n, headDim, prefix + n));
        using var dout = Device.Allocate<float>((long)n * heads * headDim);
        float[] actual;
        if (f16)
        {
            using var dcache = Device.Allocate<Half>(blocks * KvCacheKernels.BlockFloats(layout));
            Device.Clear(dcache.Span.Pointer, dcache.Span.Bytes);
            Cuda.Kernels.KvCache.StoreKv(Device, dk, dv, tokens, dt, table.Length, 0, dcache.Span, blocks, layout, layer);
            Cuda.Kernels.Attention.AttentionF32(Device, dq, n, heads, dcache.Span, blocks, layout, layer, dt, table.Length, prefix,
                dmask?.Span ?? default, tree ? windowMask.WordsPerRow : 0, scale, scratch, dout, batchInvariant, tensorCores: true,
                softCap: softCap, windowStarts: dstarts.Span);
            actual = Device.Download<float>(dout);
        }
        else
        {
            using var dcache = Device.Allocate<float>(blocks * KvCacheKernels.BlockFloats(layout));
            Device.Clear(dcache.Span.Pointer, dcache.Span.Bytes);
            Cuda.Kernels.KvCache.StoreKvF32(Device, dk, dv, tokens, dt, table.Length, 0, dcache, blocks, layout, layer);
            Cuda.Kernels.Attention.AttentionF32(Device, dq, n, heads, dcache.Span, blocks, layout, layer, dt, table.Length, prefix,
                dmask?.Span ?? default, tree ? windowMask.WordsPerRow : 0, scale, scratch, dout, batchInvariant,
                softCap: softCap, windowStarts: dstarts.Span);
            actual = Device.Download<float>(dout);
        }
        double bound = f16 ? Math.Pow(2, -10) * v.Max(x => Math.Abs((double)x)) : 2.0 * (tokens + headDim) * U * 4 * Math.Sqrt(headDim) + 1e-6;
        for (int i = 0; i < expected.Length; i++)
            Assert.That(actual[i], Is.EqualTo(expected[i]).Within(bound), $"{kernel}: row {i / (heads * headDim)}, head {i / headDim % heads}, dim {i % headDim}");
    }

    /// <summary>
    /// A model whose every layer is windowed (or, hybrid, Gemma 2's windowed layer beside a global one)
    /// decodes far past its KV pool on the device: the block table's
    /// released entries are never read, the splits follow the window — over an F32 cache with the CPU
    /// test's tolerance, over an F16 cache (keys and values rounded to binary16, 2^-11 relative) with the
    /// 1e-2 of the other F16-cache tests.
    /// </summary>
    [TestCase(GgmlType.F32, false)]
    [TestCase(GgmlType.F16, false)]
    [TestCase(GgmlType.F32, true)]
    public void Windowed_model_decodes_past_its_kv_pool(GgmlType cacheType, bool hybrid)
    {
        var model = TinyModel.Random(hybrid ? WindowedCacheTests.HybridSpec : WindowedCacheTests.Spec);
        using var dir = new TempDir();
        using var lm = LanguageModel.Load(model.WriteGguf(dir.File("m.gguf")), new ModelOptions
        {
            Backend = new CudaBackend(Device, ownsDevice: false, useCuBlas: false, kvCacheType: cacheType),
            MaxBatch = 4,
        });
        WindowedCacheTests.DecodeFarPastThePool(lm, model, 90, cacheType == GgmlType.F16 ? 1e-2 : 2e-5);
    }

    [TestCaseSource(nameof(AttentionCases))]
    public void Store_kv_and_attention_match_the_cpu_references(int heads, int kvHeads, int headDim, int blockSize, int prefix, int n, bool tree)
    {
        var layout = new KvLayout(Layers: 2, KvHeads: kvHeads, HeadDim: headDim, BlockSize: blockSize);
        int layer = 1, tokens = prefix + n;
        int blocks = (tokens + blockSize - 1) / blockSize + 3;
        var rng = new Random(heads * 1000 + prefix + n);
        // Blocks of the sequence in a scrambled order, as a paged cache hands them out.
        var table = Enumerable.Range(0, blocks).OrderBy(_ => rng.Next()).Take((tokens + blockSize - 1) / blockSize).ToArray();
        var k = RandomFloats(rng, tokens * kvHeads * headDim);
        var v = RandomFloats(rng, tokens * kvHeads * headDim);
        var q = RandomFloats(rng, n * heads * headDim);
        var mask = tree
            ? AttentionMask.FromParents(Enumerable.Range(0, n).Select(i => i == 0 ? -1 : rng.Next(-1, i)).ToArray())
            : AttentionMask.Causal;
        float scale = 1 / MathF.Sqrt(headDim);

        var cache = new float[blocks * KvCacheKernels.BlockFloats(layout)];
        KvCacheKernels.StoreKvF32(k, v, tokens, table, 0, cache, layout, layer);
        var expected = new float[n * heads * headDim];
        if (KvCacheKernels.UsesPrefillKernel(n, headDim))
            KvCacheKernels.AttentionPrefillF32(q, n, heads, cache, layout, layer, table, prefix, mask, scale, expected);
        else
            KvCacheKernels.AttentionF32(q, n, heads, cache, layout, layer, table, prefix, mask, scale, expected);

        using var dcache = Device.Allocate<float>(cache.Length);
        Device.Clear(dcache.Span.Pointer, dcache.Span.Bytes);
        using var dk = Device.Upload<float>(k);
        using var dv = Device.Upload<float>(v);
        using var dt = Device.Upload<int>(table);
        // The prefix in one store, the batch in a second: as a decode loop fills the cache.
        if (prefix > 0)
            Cuda.Kernels.KvCache.StoreKvF32(Device, dk, dv, prefix, dt, table.Length, 0, dcache, blocks, layout, layer);
        long cols = (long)kvHeads * headDim;
        Cuda.Kernels.KvCache.StoreKvF32(Device, dk.Span.Slice(prefix * cols, n * cols), dv.Span.Slice(prefix * cols, n * cols), n, dt, table.Length,
            prefix, dcache, blocks, layout, layer);
        var deviceCache = Device.Download<float>(dcache);
        for (int b = 0; b < table.Length; b++)
        {
            var expectedBlock = cache.AsSpan((int)(table[b] * KvCacheKernels.BlockFloats(layout)), (int)KvCacheKernels.BlockFloats(layout)).ToArray();
            var actualBlock = deviceCache.AsSpan((int)(table[b] * KvCacheKernels.BlockFloats(layout)), (int)KvCacheKernels.BlockFloats(layout)).ToArray();
            Assert.That(actualBlock, Is.EqualTo(expectedBlock), $"KV block {table[b]}");
        }

        using var dq = Device.Upload<float>(q);
        using var dmask = tree ? Device.Upload<ulong>(mask.Bits[..(n * mask.WordsPerRow)]) : null;
        using var scratch = Device.Allocate<float>(KvCacheKernels.ScratchFloats(heads, n, headDim, prefix + n));
        using var dout = Device.Allocate<float>(expected.Length);
        Cuda.Kernels.Attention.AttentionF32(Device, dq, n, heads, dcache.Span, blocks, layout, layer, dt, table.Length, prefix,
            dmask?.Span ?? default, tree ? mask.WordsPerRow : 0, scale, scratch, dout);
        var actual = Device.Download<float>(dout);
        // Outputs are convex combinations of values in [-2, 2]: the orders of the score sums (headDim
        // terms of |q·k| ≤ 4) and of the weighted sums over ≤ 3070 keys differ; expf differs by ulps.
        // 2·(keys + headDim)·u·4 bounds what reordering can do to an output of magnitude ≤ 2.
        double bound = 2.0 * (tokens + headDim) * U * 4 + 1e-6;
        for (int i = 0; i < expected.Length; i++)
            Assert.That(actual[i], Is.EqualTo(expected[i]).Within(bound), $"row {i / (heads * headDim)}, head {i / headDim % heads}, dim {i % headDim}");
    }

    [Test]
    public void Copy_slot_matches_the_cpu_reference()
    {
        var layout = new KvLayout(Layers: 3, KvHeads: 2, HeadDim: 40, BlockSize: 16);
        int blocks = 4;
        var cache = RandomFloats(new Random(8), (int)(blocks * KvCacheKernels.BlockFloats(layout)));
        using var dcache = Device.Upload<float>(cache);
        KvCacheKernels.CopySlotF32(cache, layout, 3, 15, 1, 2);
        Cuda.Kernels.KvCache.CopySlotF32(Device, dcache, blocks, layout, 3, 15, 1, 2);
        Assert.That(Device.Download<float>(dcache), Is.EqualTo(cache));
    }

    private LanguageModel LoadOnGpu(string path, bool useCuBlas, int maxBatch = 256, bool cudaGraphs = false) =>
        LanguageModel.Load(path, new ModelOptions { Backend = new CudaBackend(Device, ownsDevice: false, useCuBlas, cudaGraphs), MaxBatch = maxBatch });

    /// <summary>
    /// The whole forward pass on the GPU against the double-precision reference, with the CPU test's
    /// tolerance (float32 throughout: 2e-5 of the logits' scale) when every product runs on the gemv
    /// kernels; through cuBLAS the prompt's activations and weights are rounded to F16 (2^-11 relative
    /// per value), which moves these logits by ~1e-3 of their scale: 1e-2 there, and for Q5_1, which
    /// has no kernel and is converted to F16 when uploaded.
    /// </summary>
    [Test]
    public void Forward_matches_the_reference([ValueSource(typeof(ModelParityTests), nameof(ModelParityTests.Specs))] TinySpec spec,
        [Values(false, true)] bool cuBlas)
    {
        var model = TinyModel.Random(spec);
        using var dir = new TempDir();
        string path = model.WriteGguf(dir.File("m.gguf"));
        using var lm = LoadOnGpu(path, cuBlas);
        var backend = (CudaBackend)lm.Backend;
        if (cuBlas && !backend.UsesCuBlas)
            Assert.Ignore($"cuBLAS is not available here: {CuBlas.Status}");
        bool half = cuBlas || !Cuda.Kernels.WeightFormats.IsSupported(spec.WeightType);
        ModelParityTests.AssertLogitsMatch(lm, model.ReferenceLogits(ModelParityTests.Prompt), half ? 1e-2 : 2e-5);
    }

    /// <summary>
    /// moe.cu's device-routed experts (routing, every chosen expert's gate/up and down rows, the weighted
    /// sum; Qwen2-MoE's shared expert added last) against the same model routed on the host: the expert
    /// products are the same dot loop, so only the routing weights' rounding differs (expf against the
    /// host's exp, about 1 ulp): 1e-5 of the logits' scale. And the device path gives a row the same bits
    /// in a 14-row batch as alone.
    /// </summary>
    [TestCase("mixtral-4x2")]
    [TestCase("qwen2moe-shared")]
    [TestCase("qwen3moe-q4_0")]
    public void Moe_routed_on_the_device_matches_host_routing(string name)
    {
        var spec = ModelParityTests.Specs().Single(s => s.Name == name);
        var model = TinyModel.Random(spec);
        using var dir = new TempDir();
        using var gpu = LoadOnGpu(model.WriteGguf(dir.File("m.gguf")), useCuBlas: false);
        int[] prompt = ModelParityTests.Prompt;
        int vocab = gpu.Config.VocabSize;
        float[] Run(bool host)
        {
            gpu.Network.HostRouting = host;
            return ModelParityTests.PromptLogits(gpu, prompt, batchInvariant: true);
        }
        var device = Run(host: false);
        Assert.That(gpu.Network.DeviceRoutedLayers, Is.EqualTo(spec.Layers), "one device-routed pass per layer");
        var hostRouted = Run(host: true);
        double scale = hostRouted.Max(MathF.Abs);
        for (int i = 0; i < device.Length; i++)
            Assert.That(device[i], Is.EqualTo(hostRouted[i]).Within(1e-5 * scale), $"row {i / vocab}, logit {i % vocab}");
        gpu.Network.HostRouting = false;
        ModelParityTests.AssertSingleStepsEqual(gpu, prompt, device);
    }

    /// <summary>
    /// chunk_sparse_ffn.cu: BlockFFN's sparse path equals the dense computation of the same layers bit for
    /// bit on the device too (blocks outside a token's set add exact zeros, in ascending order), for a
    /// 14-row chunk and for decoding rows; and a chunk gives each row the logits it gets alone.
    /// </summary>
    [TestCase(GgmlType.F32)]
    [TestCase(GgmlType.Q8_0)]
    public void Chunk_sparse_ffn_equals_the_dense_computation(GgmlType type)
    {
        var model = TinyModel.Random(new TinySpec("sparse-gpu", Arch: "blockffn", WeightType: type, Heads: 4, KvHeads: 2, Experts: 12, Ffn: 32, Seed: 87));
        using var dir = new TempDir();
        using var gpu = LoadOnGpu(model.WriteGguf(dir.File("m.gguf")), useCuBlas: false);
        int[] prompt = ModelParityTests.Prompt;
        float[] Run(bool dense)
        {
            gpu.Network.DenseBlockFfn = dense;
            return ModelParityTests.PromptLogits(gpu, prompt, batchInvariant: true);
        }
        var sparse = Run(dense: false);
        Assert.That(Run(dense: true), Is.EqualTo(sparse));
        gpu.Network.DenseBlockFfn = false;
        Assert.That(gpu.Network.BlockSparsity!.TokenLevel(0), Is.GreaterThan(0.3), "the chunk really skipped blocks");
        ModelParityTests.AssertSingleStepsEqual(gpu, prompt, sparse);
    }

    [Test]
    public void Forward_with_a_tree_mask_matches_the_cpu_backend()
    {
        var model = TinyModel.Random(new TinySpec("tree", Heads: 8, KvHeads: 2, Layers: 3, WeightType: GgmlType.Q4_0, Seed: 21));
        using var dir = new TempDir();
        string path = model.WriteGguf(dir.File("m.gguf"));
        using var gpu = LoadOnGpu(path, useCuBlas: false);
        using var cpu = LanguageModel.Load(path, new ModelOptions { Backend = new Backends.Cpu.CpuBackend(2, quantizeActivations: false) });
        int[] prompt = [5, 9, 33, 200, 7, 64];
        int[] parents = [-1, 0, 0, 1, 1, 2, 4, -1, 7];
        int[] draft = [10, 11, 12, 13, 14, 15, 16, 17, 18];
        int[] positions = parents.Select((_, i) => prompt.Length + Depth(parents, i)).ToArray();
        var logits = new List<float[]>();
        foreach (var lm in new[] { gpu, cpu })
        {
            using var cache = lm.Network.CreateKvCache(64);
            using var seq = cache.CreateSequence();
            var unused = new float[lm.Config.VocabSize];
            lm.Network.Forward(seq, prompt, Enumerable.Range(0, prompt.Length).ToArray(), AttentionMask.Causal, [prompt.Length - 1], unused);
            var l = new float[draft.Length * lm.Config.VocabSize];
            lm.Network.Forward(seq, draft, positions, AttentionMask.FromParents(parents), Enumerable.Range(0, draft.Length).ToArray(), l);
            logits.Add(l);
        }
        // Both in float32 with different summation orders: the CPU parity tolerance of the logits' scale.
        double scale = logits[1].Max(MathF.Abs);
        for (int i = 0; i < logits[0].Length; i++)
            Assert.That(logits[0][i], Is.EqualTo(logits[1][i]).Within(2e-5 * scale), $"node {i / gpu.Config.VocabSize}, logit {i % gpu.Config.VocabSize}");
    }

    private static int Depth(int[] parents, int i) => parents[i] < 0 ? 0 : 1 + Depth(parents, parents[i]);

    /// <summary>
    /// A continuous batch on the device (<see cref="Models.LlamaModel.ForwardBatch"/>: rows copied per
    /// sequence with <c>CopyRows</c>, attention over each sequence's own block table) gives each sequence
    /// what the CPU gives it alone.
    /// </summary>
    [Test]
    public void A_continuous_batch_matches_the_cpu_per_sequence()
    {
        var model = TinyModel.Random(new TinySpec("batch-gpu", Heads: 8, KvHeads: 2, Layers: 2, WeightType: GgmlType.Q8_0, Seed: 23));
        using var dir = new TempDir();
        string path = model.WriteGguf(dir.File("m.gguf"));
        using var gpu = LoadOnGpu(path, useCuBlas: false);
        using var cpu = LanguageModel.Load(path, new ModelOptions { Backend = new Backends.Cpu.CpuBackend(2, quantizeActivations: false) });
        int[][] prompts = [[5, 9, 33, 200, 7], [1, 2], [40, 41, 42, 43, 44, 45, 46, 47, 48]];
        int vocab = gpu.Config.VocabSize;
        var expected = new List<float[]>();
        foreach (var p in prompts)
        {
            using var cache = cpu.Network.CreateKvCache(64);
            using var seq = cache.CreateSequence();
            var l = new float[vocab];
            cpu.Network.Forward(seq, p, Enumerable.Range(0, p.Length).ToArray(), AttentionMask.Causal, [p.Length - 1], l);
            cpu.Network.Forward(seq, [3], [p.Length], AttentionMask.Causal, [0], l);
            expected.Add(l);
        }
        using var shared = gpu.Network.CreateKvCache(64, sequences: 3);
        var seqs = prompts.Select(_ => shared.CreateSequence()).ToArray();
        try
        {
            var first = new float[3 * vocab];
            gpu.Network.ForwardBatch(seqs.Select((s, j) => new Models.BatchSegment(s, prompts[j].Length, true)).ToArray(), prompts.SelectMany(p => p).ToArray(), first);
            var got = new float[3 * vocab];
            gpu.Network.ForwardBatch(seqs.Select(s => new Models.BatchSegment(s, 1, true)).ToArray(), [3, 3, 3], got);
            // float32 on both sides, different summation orders: the CPU parity tolerance of the logits' scale
            for (int j = 0; j < 3; j++)
            {
                double scale = expected[j].Max(MathF.Abs);
                for (int i = 0; i < vocab; i++)
                    Assert.That(got[j * vocab + i], Is.EqualTo(expected[j][i]).Within(2e-5 * scale), $"sequence {j}, logit {i}");
            }
        }
        finally
        {
            foreach (var s in seqs)
                s.Dispose();
        }
    }

    [Test]
    public void Stories_greedy_decoding_gives_the_reference_ids([Values(false, true)] bool cuBlas, [Values(false, true)] bool cudaGraphs)
    {
        if (cudaGraphs)
            RequireGpu("CUDA graph capture");
        if (cuBlas)
            RequireGpu("cuBLAS");
        var expected = SharedData.StoriesExpected();
        using var lm = LoadOnGpu(SharedData.StoriesGguf, cuBlas, cudaGraphs: cudaGraphs);
        using (var session = lm.CreateSession())
            Assert.That(session.Generate([1], new GenerationOptions { MaxTokens = 256, Sampling = SamplingOptions.Greedy }).ToList(), Is.EqualTo(expected.FromBos));
        var prompt = lm.Tokenizer.Encode("Once upon a time, there was a little dog");
        using (var session = lm.CreateSession())
            Assert.That(session.Generate(prompt, new GenerationOptions { MaxTokens = 48, Sampling = SamplingOptions.Greedy }).ToList(), Is.EqualTo(expected.AfterPrompt));
    }

    /// <summary>
    /// A chain the fused kernel cannot compute (here a logit bias and penalties) samples on the host from the
    /// device's logits: the banned token never comes, and the ids are the CPU's with the same chain (greedy
    /// on stories260K, whose device and CPU logits agree on every argmax of the reference run).
    /// </summary>
    [Test]
    public void A_chain_beyond_the_fused_kernel_samples_on_the_host()
    {
        var sampling = SamplingOptions.Greedy with
        {
            LogitBias = new Dictionary<int, float> { [SharedData.StoriesExpected().AfterPrompt[0]] = float.NegativeInfinity },
            RepeatPenalty = 1.2f,
        };
        Assert.That(sampling.IsFusable, Is.False);
        List<int> Run(LanguageModel lm)
        {
            var ids = lm.Tokenizer.Encode("Once upon a time, there was a little dog");
            using var session = lm.CreateSession();
            return session.Generate(ids, new GenerationOptions { MaxTokens = 24, Sampling = sampling, StopAtEndOfGeneration = false }).ToList();
        }
        using var gpu = LoadOnGpu(SharedData.StoriesGguf, useCuBlas: false);
        using var cpu = LanguageModel.Load(SharedData.StoriesGguf, new ModelOptions { Threads = 1 });
        var onGpu = Run(gpu);
        Assert.That(onGpu, Does.Not.Contain(SharedData.StoriesExpected().AfterPrompt[0]));
        Assert.That(onGpu, Is.EqualTo(Run(cpu)));
    }

    /// <summary>
    /// A prompt over the F16 cache takes the tensor-core attention (binary16 queries and probabilities)
    /// through the whole backend; the logits stay within 1e-2 of their scale of the double reference —
    /// the tolerance of the cuBLAS path, whose products round to F16 the same way — and the next decode
    /// steps, on the float32 kernels over that cache, too. With the kernel switched off the batch runs
    /// on the float32 tiled kernel over the same cache.
    /// </summary>
    [Test]
    public void Prefill_over_the_f16_cache_matches_the_reference()
    {
        var spec = new TinySpec("tc", Heads: 4, KvHeads: 2, Dim: 128, Seed: 21); // head_dim 32: a multiple of 16
        var model = TinyModel.Random(spec);
        using var dir = new TempDir();
        string path = model.WriteGguf(dir.File("m.gguf"));
        var reference = model.ReferenceLogits(ModelParityTests.Prompt);
        int n = ModelParityTests.Prompt.Length;
        Assert.That(Cuda.Kernels.Attention.UsesTensorCores(Device, true, n, spec.HeadDim, false), "the prompt is a tensor-core batch");
        var prompts = new List<float[]>();
        foreach (bool tensorCores in new[] { true, false })
        {
            var backend = new CudaBackend(Device, ownsDevice: false, useCuBlas: false, kvCacheType: GgmlType.F16) { TensorCorePrefill = tensorCores };
            using var lm = LanguageModel.Load(path, new ModelOptions { Backend = backend });
            ModelParityTests.AssertLogitsMatch(lm, reference, 1e-2);
            using var cache = lm.Network.CreateKvCache(n + 32);
            using var seq = cache.CreateSequence();
            var logits = new float[n * lm.Config.VocabSize];
            lm.Network.Forward(seq, ModelParityTests.Prompt, Enumerable.Range(0, n).ToArray(), AttentionMask.Causal, Enumerable.Range(0, n).ToArray(), logits);
            prompts.Add(logits);
        }
        Assert.That(prompts[0], Is.Not.EqualTo(prompts[1]), "the tensor-core kernel ran (its binary16 products round differently from the float32 kernel)");
    }

    /// <summary>
    /// A model whose weights, KV cache and activations exceed the device's free memory is refused before
    /// anything is allocated, with one line naming what it needed and what was free; a load that fails
    /// midway (an upload refused) frees what it had uploaded. On the emulator the device is given a
    /// memory limit; on a GPU the check is asked about a plan twice the device's size.
    /// </summary>
    [Test]
    public void A_model_that_does_not_fit_fails_at_load_and_leaves_nothing_allocated()
    {
        if (!Device.IsEmulator)
        {
            using var gpu = new CudaBackend(Device, ownsDevice: false);
            long total = Device.MemoryInfo().Total;
            var e = Assert.Throws<DeviceMemoryException>(() => gpu.Reserve(new MemoryPlan("huge.gguf", [("weights", 2 * total)])))!;
            Assert.That(e.Message, Does.Contain("huge.gguf needs").And.Contain("free"));
            return;
        }
        using var probe = LanguageModel.Load(SharedData.StoriesGguf, new ModelOptions { Backend = new CudaBackend(Device, ownsDevice: false), ContextLength = 512 });
        var plan = MemoryPlan.For(SharedData.StoriesGguf, probe.Config, WeightsOf(SharedData.StoriesGguf), probe.Backend, 512, 256);
        long weights = plan.Parts[0].Bytes;
        Assert.That(weights, Is.GreaterThan(500_000), "stories260K's float32 weights");

        // Room for the weights but not for a 512-token cache and the activations: refused up front.
        using (var small = GpuDevice.OpenEmulator(memoryLimit: weights + 1024))
        {
            var e = Assert.Throws<DeviceMemoryException>(() => LanguageModel.Load(SharedData.StoriesGguf,
                new ModelOptions { Backend = new CudaBackend(small), ContextLength = 512 }))!;
            Assert.That(e.Message, Does.Contain("needs").And.Contain("weights").And.Contain("KV cache (512 tokens)").And.Contain("free"));
            Assert.That(e.Message.Split('\n'), Has.Length.EqualTo(1), "one line");
            Assert.That(small.MemoryInfo().Free, Is.EqualTo(weights + 1024), "nothing was allocated");
        }
        // An upload refused halfway through the weights: what was uploaded is freed.
        using (var tiny = GpuDevice.OpenEmulator(memoryLimit: weights / 2))
        {
            using var source = WeightsOf(SharedData.StoriesGguf);
            using (var backend = new CudaBackend(tiny))
                Assert.Throws<CudaException>(() => Engine.Models.LlamaWeights.Load(source, probe.Config, backend));
            Assert.That(tiny.MemoryInfo().Free, Is.EqualTo(weights / 2), "the weights uploaded before the failure were freed");
        }
        // Enough for the plan: loads and decodes.
        using (var enough = GpuDevice.OpenEmulator(memoryLimit: plan.Total + (1 << 20)))
        {
            using var lm = LanguageModel.Load(SharedData.StoriesGguf, new ModelOptions { Backend = new CudaBackend(enough), ContextLength = 512 });
            using var session = lm.CreateSession();
            Assert.That(session.Generate([1], new GenerationOptions { MaxTokens = 8, Sampling = SamplingOptions.Greedy }).ToList(),
                Is.EqualTo(SharedData.StoriesExpected().FromBos.Take(8)));
        }
    }

    private static Engine.Models.WeightSource WeightsOf(string gguf) => new Engine.Models.GgufWeightSource(Engine.Formats.Gguf.GgufFile.Open(gguf));

    /// <summary>
    /// The fused decoding kernels (q/k/v in one launch, RoPE with the cache write, gate/up with SwiGLU,
    /// the residual add and the next RMSNorm in the projection's epilogue) run the very arithmetic of the
    /// separate kernels, so the logits are equal bit for bit — for a batch on the gemv path (a verified
    /// draft of 14 rows: two launches of up to 8, each normalizing its own rows) and for single steps,
    /// with biases, GQA, NeoX RoPE, quantized rows and an F16 cache.
    /// </summary>
    [TestCase("qwen2-neox-bias-gqa", GgmlType.F32)]
    [TestCase("q4_0", GgmlType.F16)]
    [TestCase("gqa", GgmlType.F32)]
    [TestCase("granite-multipliers", GgmlType.F32)] // the residual multiplier in the epilogue, as scale_f32 then add_f32
    [TestCase("qwen3-qknorm-wide-heads", GgmlType.F16)]
    public void Fused_decoding_kernels_give_the_bits_of_the_separate_ones(string specName, GgmlType cacheType)
    {
        var spec = ModelParityTests.Specs().Single(s => s.Name == specName);
        var model = TinyModel.Random(spec);
        using var dir = new TempDir();
        string path = model.WriteGguf(dir.File("m.gguf"));
        float[] Run(bool fuse, out long launches)
        {
            var backend = new CudaBackend(Device, ownsDevice: false, useCuBlas: false, kvCacheType: cacheType) { FuseSteps = fuse };
            using var lm = LanguageModel.Load(path, new ModelOptions { Backend = backend });
            int[] prompt = ModelParityTests.Prompt;
            int n = prompt.Length, vocab = lm.Config.VocabSize;
            using var cache = lm.Network.CreateKvCache(n + 64, 16);
            using var seq = cache.CreateSequence();
            var all = new List<float>();
            var logits = new float[n * vocab];
            lm.Network.Forward(seq, prompt, Enumerable.Range(0, n).ToArray(), AttentionMask.Causal, Enumerable.Range(0, n).ToArray(), logits,
                batchInvariant: true);
            all.AddRange(logits);
            var one = new float[vocab];
            long before = Device.Launches;
            for (int t = 0; t < 3; t++)
            {
                lm.Network.Forward(seq, [prompt[t]], [n + t], AttentionMask.Causal, [0], one);
                all.AddRange(one);
            }
            launches = (Device.Launches - before) / 3;
            return [.. all];
        }
        var separate = Run(false, out long separateLaunches);
        var fused = Run(true, out long fusedLaunches);
        Assert.That(fused.Length, Is.EqualTo(separate.Length));
        for (int i = 0; i < fused.Length; i++)
        {
            if (BitConverter.SingleToInt32Bits(fused[i]) != BitConverter.SingleToInt32Bits(separate[i]))
                Assert.Fail($"logit {i}: fused {fused[i]:R}, separate {separate[i]:R}");
        }
        // 2 layers: fused 6 launches a layer (+ embedding, first norm, gather, head), separate 16+ a layer;
        // Qwen3 adds its two head norms a layer, Granite its embedding and logit scales.
        int extra = (spec.QkNorm ? 2 * spec.Layers : 0) + (spec.EmbeddingScale != 1 ? 1 : 0) + (spec.LogitScale != 1 ? 1 : 0);
        Assert.That(fusedLaunches, Is.LessThanOrEqualTo(spec.Layers * 6 + 4 + extra), $"fused step: {fusedLaunches} launches");
        Assert.That(separateLaunches, Is.GreaterThan(fusedLaunches + spec.Layers * 6), $"separate step: {separateLaunches} launches");
    }

    /// <summary>
    /// Speculative decoding on the device is lossless bit for bit: verification runs batch-invariant
    /// (gemv rows as alone, attention split by each row's own key ranks), so greedy output with Token
    /// Recycling's trees and with prompt lookup's chains equals plain greedy output on the same device.
    /// </summary>
    [TestCase("recycle")]
    [TestCase("lookup")]
    [TestCase("online")]
    [TestCase("layerskip")]
    [TestCase("draft")]
    [TestCase("rsd")]
    public void Greedy_speculative_output_equals_plain_greedy_output_on_the_device(string method)
    {
        using var lm = LoadOnGpu(SharedData.StoriesGguf, useCuBlas: true);
        // The draft model on the same device: the Q8_0 stories260K (its own weights, the same vocabulary).
        using var dir = new TempDir();
        string? draftPath = null;
        if (method is "draft" or "rsd")
        {
            draftPath = dir.File("draft-q8_0.gguf");
            var (code, _, err) = CliTests.Run("quantize", SharedData.StoriesGguf, draftPath, "Q8_0");
            Assert.That(code, Is.Zero, err);
        }
        using var draft = draftPath is null ? null : LoadOnGpu(draftPath, useCuBlas: true);
        int[] prompt = [.. lm.Tokenizer.Encode("Once upon a time, there was a little dog", addSpecial: true)];
        var plain = SpeculativeTests.Plain(lm, prompt, 48);
        var (spec, stats) = SpeculativeTests.Speculative(lm, Engine.Speculative.DraftSources.Create(method, lm, draft, layers: method == "layerskip" ? 4 : 0), prompt, 48);
        Assert.That(spec, Is.EqualTo(plain));
        Assert.That(stats.AcceptedTokens, Is.GreaterThan(0), "drafts were accepted, so verification ran");
    }

    /// <summary>A graph replays the very kernels a direct pass launches, in the same order: logits equal bit for bit.</summary>
    [Test]
    public void Decode_steps_replayed_as_cuda_graphs_equal_direct_launches()
    {
        RequireGpu("CUDA graph capture");
        var model = TinyModel.Random(new TinySpec("graphs", Heads: 8, KvHeads: 2, Layers: 3, WeightType: GgmlType.Q4_0, Seed: 41));
        using var dir = new TempDir();
        string path = model.WriteGguf(dir.File("m.gguf"));
        using var direct = LoadOnGpu(path, useCuBlas: false);
        using var graphs = LoadOnGpu(path, useCuBlas: false, cudaGraphs: true);
        var tokens = new List<int[]>();
        var runs = new List<float[]>();
        foreach (var lm in new[] { direct, graphs })
        {
            using var cache = lm.Network.CreateKvCache(128, blockSize: 16);
            using var seq = cache.CreateSequence();
            var logits = new float[lm.Config.VocabSize];
            lm.Network.Forward(seq, [1, 2, 3], [0, 1, 2], AttentionMask.Causal, [2], logits);
            var ids = new List<int>();
            var all = new List<float>();
            for (int step = 0; step < 60; step++) // crosses block boundaries: the block-table upload comes and goes
            {
                int token = Activations.ArgMaxF32(logits);
                ids.Add(token);
                lm.Network.Forward(seq, [token], [seq.Length], AttentionMask.Causal, [0], logits);
                all.AddRange(logits);
            }
            tokens.Add([.. ids]);
            if (lm == graphs)
            {
                var stats = ((CudaBackend)lm.Backend).GraphStats;
                Assert.That(stats.Replays, Is.GreaterThanOrEqualTo(59), "every step after the first is replayed");
                TestContext.Progress.WriteLine($"graph replays {stats.Replays}, instantiations {stats.Instantiations}");
                // Every capture records the same nodes (each host input copied once, changed or not), so
                // the executable graph is updated in place; a block-table copy that came and went made
                // 2 instantiations per new block (7 here) and graphs slower than direct launches.
                Assert.That(stats.Instantiations, Is.LessThanOrEqualTo(2), "steps update the instantiated graph instead of rebuilding it");
            }
            runs.Add([.. all]);
        }
        Assert.That(tokens[1], Is.EqualTo(tokens[0]));
        Assert.That(runs[1], Is.EqualTo(runs[0]), "bit for bit");
    }

    [Test]
    public void The_decode_loop_makes_no_driver_allocation()
    {
        var model = TinyModel.Random(new TinySpec("alloc", Heads: 4, KvHeads: 2, WeightType: GgmlType.Q8_0, Seed: 31));
        using var dir = new TempDir();
        using var lm = LoadOnGpu(model.WriteGguf(dir.File("m.gguf")), useCuBlas: true);
        using var cache = lm.Network.CreateKvCache(200, blockSize: 16);
        using var seq = cache.CreateSequence();
        var logits = new float[lm.Config.VocabSize];
        int[] prompt = Enumerable.Range(1, 20).ToArray();
        lm.Network.Forward(seq, prompt, Enumerable.Range(0, 20).ToArray(), AttentionMask.Causal, [19], logits);
        int token = 5;
        lm.Network.Forward(seq, [token], [seq.Length], AttentionMask.Causal, [0], logits); // first step: scratch sized
        long before = Device.Pool.DriverAllocations, pinnedBefore = Device.PinnedAllocations;
        for (int step = 0; step < 100; step++) // crosses several 16-token blocks
        {
            token = Activations.ArgMaxF32(logits);
            lm.Network.Forward(seq, [token], [seq.Length], AttentionMask.Causal, [0], logits);
        }
        Assert.That(Device.Pool.DriverAllocations - before, Is.Zero, "cuMemAlloc calls during 100 decode steps");
        Assert.That(Device.PinnedAllocations - pinnedBefore, Is.Zero, "cuMemAllocHost calls during 100 decode steps");
    }

    /// <summary>
    /// The CLI with --device cuda: generate reproduces the reference ids, bench and kernels-bench run and
    /// report. (On the emulator the CLI's device is the emulator too, through ENGINE_CUDA_EMULATOR.)
    /// </summary>
    [Test]
    public void Cli_generate_bench_and_kernels_bench_run_on_the_device()
    {
        string? saved = Environment.GetEnvironmentVariable(GpuDevice.EmulatorVariable);
        if (Device.IsEmulator)
            Environment.SetEnvironmentVariable(GpuDevice.EmulatorVariable, "1");
        try
        {
            var expected = SharedData.StoriesExpected();
            // An F32 cache for the exact reference ids; the device's default cache is F16.
            var (code, output, err) = CliTests.Run("generate", "-m", SharedData.StoriesGguf, "--device", "cuda", "--cache-type", "f32", "--prompt-ids", "1", "-n", "32",
                "--temp", "0", "--ids");
            Assert.That(code, Is.Zero, err);
            Assert.That(output.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse), Is.EqualTo(expected.FromBos.Take(32)));
            Assert.That(err, Does.Contain("device: cuda:0"));
            (code, output, err) = CliTests.Run("generate", "-m", SharedData.StoriesGguf, "--device", "cuda", "--prompt-ids", "1", "-n", "16",
                "--temp", "0.8", "--seed", "5", "--ids");
            Assert.That(code, Is.Zero, err);
            Assert.That(output.Split(' ', StringSplitOptions.RemoveEmptyEntries), Has.Length.InRange(1, 16), "sampled on the device over an F16 cache");

            string[] bench = ["bench", "-m", SharedData.StoriesGguf, "--device", "cuda", "-p", "16", "-n", "8", "-r", "1", "--json"];
            if (!Device.IsEmulator)
                bench = [.. bench, "--cuda-graphs"];
            (code, output, err) = CliTests.Run(bench);
            Assert.That(code, Is.Zero, err);
            using (var row = System.Text.Json.JsonDocument.Parse(output))
            {
                Assert.That(row.RootElement.GetProperty("device").GetString(), Is.EqualTo("cuda:0"));
                Assert.That(row.RootElement.GetProperty("tg_tokens_per_s").GetDouble(), Is.GreaterThan(0));
                Assert.That(row.RootElement.GetProperty("cache_type").GetString(), Is.EqualTo("f16"), "the device's default cache");
                Assert.That(row.RootElement.GetProperty("launches_per_token").GetDouble(), Is.InRange(5 * 6, 5 * 6 + 6),
                    "stories260K: 5 layers of 6 launches (q/k/v, RoPE + cache write, attention with its merge, Wo + add + norm, gate/up + SwiGLU, down + add + norm), the embedding, the first norm and the head");
                if (!Device.IsEmulator)
                    Assert.That(row.RootElement.GetProperty("graph_replays").GetInt64(), Is.GreaterThan(0));
            }

            (code, output, err) = CliTests.Run("kernels-bench", "--kernel", "rms_norm", "--json", "-r", "1");
            Assert.That(code, Is.Zero, err);
            var lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.That(lines, Has.Length.EqualTo(3), "the device line and rms_norm_f32 on two shapes");
            Assert.That(lines.Skip(1).Select(l => System.Text.Json.JsonDocument.Parse(l).RootElement.GetProperty("valid").GetBoolean()), Is.All.True);
        }
        finally
        {
            Environment.SetEnvironmentVariable(GpuDevice.EmulatorVariable, saved);
        }
    }

    [Test]
    public void Backend_argmax_equals_the_host_argmax_of_the_downloaded_logits()
    {
        using var backend = new CudaBackend(Device);
        using var buffer = backend.Allocate(3 * 1001);
        var x = new Activation(buffer, 3, 1001);
        backend.Upload(RandomFloats(new Random(2), 3 * 1001), x);
        var host = new float[3 * 1001];
        backend.Download(x, host);
        var ids = new int[3];
        backend.ArgMax(x, ids);
        Assert.That(ids, Is.EqualTo(Enumerable.Range(0, 3).Select(r => Activations.ArgMaxF32(host.AsSpan(r * 1001, 1001))).ToArray()));
    }
}

/// <summary>Device discovery must be harmless on machines without CUDA (like CI).</summary>
public class CudaDiscoveryTests
{
    [Test]
    public void Discovery_reports_devices_or_a_reason_and_never_throws()
    {
        var devices = CudaDriver.Discover(out string reason);
        if (devices.Count == 0)
            Assert.That(reason, Is.Not.Empty);
        else
            Assert.That(devices[0].Major, Is.GreaterThan(0));
    }

    [Test]
    public void Opening_a_device_where_there_is_none_is_a_clear_error()
    {
        if (CudaDriver.Discover(out _).Count > 0)
            Assert.Ignore("this machine has a CUDA device");
        var e = Assert.Throws<CudaException>(() => GpuDevice.Open(0))!;
        Assert.That(e.Message, Does.StartWith("no CUDA device"));
        var cuda = Assert.Throws<CudaException>(() => BackendFactory.Create("cuda"))!;
        Assert.That(cuda.Message, Does.StartWith("no CUDA device"));
        using var auto = BackendFactory.Create("auto", threads: 1);
        Assert.That(auto.Name, Is.EqualTo("cpu"), "auto falls back to the CPU");
    }

    [TestCase("gpu")]
    [TestCase("cuda:x")]
    [TestCase("cuda:-1")]
    [TestCase("")]
    public void A_bad_device_name_is_a_clear_error(string name)
    {
        var e = Assert.Throws<ArgumentException>(() => BackendFactory.Create(name))!;
        Assert.That(e.Message, Does.Contain("expected cpu, cuda, cuda:N or auto"));
    }

    [Test]
    public void Ptx_for_every_kernel_file_is_embedded_for_sm80_and_sm90()
    {
        string kernels = Path.Combine(SharedData.RepositoryRoot, "kernels");
        var files = Directory.GetFiles(kernels, "*.cu").Select(f => Path.GetFileNameWithoutExtension(f)!).ToList();
        Assert.That(files, Is.SupersetOf(new[] { "rmsnorm", "gemv", "getrows", "dequantize", "rope", "swiglu", "add", "argmax", "kvcache", "attention",
            "tree_attention", "sampling", "acceptance" }));
        if (PtxModules.Variants("rmsnorm").Count == 0)
        {
            // A build without nvcc has no PTX: fine on a developer machine, an error under CI.
            if (SharedData.IsCi)
                Assert.Fail("no PTX embedded: CI must compile kernels/*.cu (build.ps1 ptx) before building");
            Assert.Ignore("no PTX embedded in this build (nvcc was not found when it was built)");
        }
        foreach (string file in files)
        {
            var archs = PtxModules.Variants(file).Select(v => v.Arch).Order().ToList();
            Assert.That(archs, Is.EqualTo(new[] { 80, 90 }), $"kernels/{file}.cu");
            var (_, ptx) = PtxModules.Select(file, 9, 0);
            Assert.That(ptx, Does.Contain(".target sm_90"), "Hopper gets the sm_90 PTX");
        }
        Assert.That(PtxModules.Select("rmsnorm", 8, 6).Ptx, Does.Contain(".visible .entry rms_norm_f32"));
        Assert.Throws<CudaException>(() => PtxModules.Select("rmsnorm", 7, 5), "no PTX runs on Volta");
    }

    /// <summary>Every kernel a launcher names exists in its file's PTX, so a renamed kernel fails here and not on a GPU.</summary>
    [Test]
    public void Every_launched_kernel_is_in_the_ptx()
    {
        if (PtxModules.Variants("gemv").Count == 0)
        {
            if (SharedData.IsCi)
                Assert.Fail("no PTX embedded under CI");
            Assert.Ignore("no PTX embedded in this build");
        }
        var expected = new Dictionary<string, List<string>>
        {
            ["rmsnorm"] = ["rms_norm_f32"],
            ["dequantize"] = ["convert_f32_f16"],
            ["rope"] = ["rope_f32"],
            ["swiglu"] = ["swiglu_f32"],
            ["add"] = ["add_f32", "add_bias_f32"],
            ["argmax"] = ["argmax_f32"],
            ["kvcache"] = ["store_kv_f32", "copy_slot_f32", "store_kv_f16", "copy_slot_f16"],
            ["attention"] = ["attention_f32", "attention_combine_f32", "attention_prefill_f32", "attention_f16", "attention_prefill_f16"],
            ["tree_attention"] = ["tree_attention_f32", "tree_attention_f16"],
            ["attention_tc"] = ["attention_prefill_tc_f16"],
            ["rope_kv"] = ["rope_store_kv_f32", "rope_store_kv_f16"],
            ["sampling"] = ["sample_f32", "top_k_ids_f32"],
            ["acceptance"] = ["accept_greedy", "accept_sampled"],
            ["gemv"] = [],
            ["getrows"] = [],
        };
        foreach (var type in Cuda.Kernels.WeightFormats.Supported)
        {
            string s = Cuda.Kernels.WeightFormats.Suffix(type);
            expected["gemv"].AddRange(["gemv_" + s, "gemv_" + s + "_x8", "gemv_" + s + "_glu", "gemv_" + s + "_glu_x8"]);
            expected["getrows"].Add("get_rows_" + s);
            expected["dequantize"].Add("dequantize_" + s + "_f16");
        }
        foreach (var (file, kernels) in expected)
        {
            string ptx = PtxModules.Select(file, 9, 0).Ptx;
            foreach (string kernel in kernels)
                Assert.That(ptx, Does.Contain($".visible .entry {kernel}("), $"kernels/{file}.cu");
        }
    }
}
