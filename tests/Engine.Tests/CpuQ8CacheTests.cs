using Engine.Backends;
using Engine.Backends.Cpu;
using Engine.Backends.Cpu.Kernels;
using Engine.Tensors;

namespace Engine.Tests;

/// <summary>
/// The CPU's 8-bit KV cache (<c>--cache-type q8_0</c>, <see cref="KvI8"/>): each head's key and value vector
/// of a token stored as bytes with one scale, attention applying the key's scale to the score and the
/// value's to the weight. Attention over it is attention over the dequantized values up to float
/// rounding, the same for a row alone or in a batch (batch invariance), and a model on it stays close to
/// the float cache.
/// </summary>
public unsafe class CpuQ8CacheTests
{
    /// <summary>The reference quantization, written out: q = round(x · 127 / max|x|) (ties to even), s = max|x| / 127.</summary>
    private static (sbyte[] Q, float Scale) Reference(ReadOnlySpan<float> x)
    {
        float amax = 0;
        foreach (float f in x)
            amax = Math.Max(amax, Math.Abs(f));
        var q = new sbyte[x.Length];
        if (amax == 0)
            return (q, 0);
        float inv = 127f / amax;
        for (int i = 0; i < x.Length; i++)
            q[i] = (sbyte)Math.Round(x[i] * inv, MidpointRounding.ToEven);
        return (q, amax / 127f);
    }

    [Test]
    public void Quantization_gives_the_reference_bytes_and_scale()
    {
        var rng = new Random(4);
        foreach (int n in new[] { 64, 128, 48, 7, 1 })
        {
            for (int trial = 0; trial < 50; trial++)
            {
                var x = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 6 - 3) * (trial % 5 == 0 ? 1e-3f : 1f)).ToArray();
                if (trial % 7 == 0)
                    x[rng.Next(n)] = 0.5f; // an exactly representable value among the random ones
                var q = new sbyte[n];
                float scale = KvI8.Quantize(x, q);
                var (expectedQ, expectedScale) = Reference(x);
                Assert.That(q, Is.EqualTo(expectedQ), $"{n} values, trial {trial}");
                Assert.That(scale, Is.EqualTo(expectedScale));
                for (int i = 0; i < n; i++)
                    Assert.That(Math.Abs(x[i] - scale * q[i]), Is.LessThanOrEqualTo(scale * 0.5f * 1.0001f), $"element {i} within half a step");
            }
        }
        var zeros = new sbyte[64];
        Assert.That(KvI8.Quantize(new float[64], zeros), Is.Zero);
        Assert.That(KvI8.Quantize(Enumerable.Repeat(1e-45f, 64).ToArray(), zeros), Is.Zero, "subnormals: zeros");
        Assert.That(zeros, Is.All.EqualTo(0));
        var inf = new float[64];
        inf[3] = float.PositiveInfinity;
        Assert.That(float.IsFinite(KvI8.Quantize(inf, zeros)), Is.False, "an infinity leaves a non-finite scale (attention gives NaN, as over floats)");
        Assert.That(zeros, Is.All.EqualTo(0));
        var nan = Enumerable.Range(0, 64).Select(i => (float)i).ToArray();
        nan[40] = float.NaN;
        Assert.That(float.IsNaN(KvI8.Quantize(nan, zeros)), "a NaN anywhere leaves a NaN scale");
        Assert.That(zeros, Is.All.EqualTo(0));
    }

    /// <summary>
    /// Attention over the 8-bit cache against attention over a float cache holding the dequantized values
    /// s·q. The two differ only in where the scale enters — (Σ q_d·k_d)·s against Σ q_d·(s·k_d) — so by
    /// float rounding: each of the head's products and sums moves a score by at most 2^-24 of its
    /// magnitude (hd·2^-24 ≈ 8e-6 at 128 wide), the softmax carries that into the weights, and the
    /// weighted sum into the outputs; 1e-4 of the values' scale bounds that with margin and is far below
    /// what one wrong byte (1/127 of a vector's scale) or a scale left out would move. The rows computed in
    /// a batch of two sequences are bit for bit the rows computed alone, and the cache really quantizes
    /// (against the unquantized values the outputs move by more than the tolerance).
    /// </summary>
    [TestCaseSource(typeof(CpuKvFixture), nameof(CpuKvFixture.AttentionCases), new object[] { "q8" })]
    public void Attention_over_a_q8_cache_is_attention_over_the_dequantized_values(int heads, int kvHeads, int headDim, int blockSize, int prefix, int n, bool tree)
    {
        var problem = new AttentionProblem(heads, kvHeads, headDim, blockSize, prefix, n, tree);
        float[] Dequantized(float[] x)
        {
            var y = new float[x.Length];
            for (int at = 0; at < x.Length; at += headDim)
            {
                var (codes, s) = Reference(x.AsSpan(at, headDim));
                for (int d = 0; d < headDim; d++)
                    y[at + d] = s * codes[d];
            }
            return y;
        }

        var alone = problem.Run(GgmlType.Q8_0, problem.K, problem.V, batch: false);
        var expected = problem.Run(GgmlType.F32, Dequantized(problem.K), Dequantized(problem.V), batch: false);
        float tolerance = 1e-4f * problem.V.Max(MathF.Abs);
        for (int i = 0; i < alone.Length; i++)
            Assert.That(alone[i], Is.EqualTo(expected[i]).Within(tolerance), $"row {i / (heads * headDim)}, head {i / headDim % heads}, dim {i % headDim}");
        var unquantized = problem.Run(GgmlType.F32, problem.K, problem.V, batch: false);
        Assert.That(unquantized.Zip(alone).Max(p => Math.Abs(p.First - p.Second)), Is.GreaterThan(tolerance), "the cache quantizes");
        if (!tree)
        {
            var batched = problem.Run(GgmlType.Q8_0, problem.K, problem.V, batch: true);
            for (int i = 0; i < alone.Length; i++)
                Assert.That(BitConverter.SingleToInt32Bits(batched[i]), Is.EqualTo(BitConverter.SingleToInt32Bits(alone[i])), $"batch: element {i}");
        }
    }

    [Test]
    public void A_copied_slot_keeps_its_bytes_and_scales()
    {
        var layout = new KvLayout(Layers: 2, KvHeads: 2, HeadDim: 64, BlockSize: 16);
        using var cpu = new CpuBackend(1, kvCacheType: GgmlType.Q8_0);
        Assert.That(cpu.KvElementBytes, Is.EqualTo(1));
        using var store = CpuKvFixture.StoredAndSlotCopied(cpu, layout, out var k, out var v); // slot 19 to block 3, offset 9
        Assert.That(store.BlockByteCount, Is.EqualTo(2L * 2 * 2 * 16 * 64 + 2L * 2 * 2 * 16 * sizeof(float)), "elements, then a scale per (layer, K/V, head, slot)");
        int cols = 2 * 64;
        byte* block = store.Pointers[3];
        for (int h = 0; h < 2; h++)
        {
            var (kq, ks) = Reference(k.AsSpan(19 * cols + h * 64, 64));
            var (vq, vs) = Reference(v.AsSpan(19 * cols + h * 64, 64));
            Assert.That(((float*)(block + Attention.ScaleOffset(layout, 1, h, false)))[9], Is.EqualTo(ks), $"key scale {h}");
            Assert.That(((float*)(block + Attention.ScaleOffset(layout, 1, h, true)))[9], Is.EqualTo(vs), $"value scale {h}");
            for (int d = 0; d < 64; d++)
            {
                Assert.That((sbyte)block[Attention.KeyOffset(layout, 1, h) + Attention.KeyIndex(d, 9, 16, layout.HeadDim)], Is.EqualTo(kq[d]), $"key {h}/{d}");
                Assert.That((sbyte)block[Attention.ValueOffset(layout, 1, h) + 9 * 64 + d], Is.EqualTo(vq[d]), $"value {h}/{d}");
            }
        }
    }

    /// <summary>
    /// stories260K on the 8-bit cache, as <see cref="CpuF16CacheTests.AssertExactAndClose"/> says, with the
    /// logits within 5e-2 of the float cache's scale: its heads are 8 wide, so a scale covers only 8 values
    /// and each is off by up to 1/254 of its vector's largest; measured, the logits move by about 1.1e-2 of
    /// their scale over the 5 layers, where a wrong byte layout or a lost scale moves them by their whole scale.
    /// </summary>
    [Test]
    public void A_model_on_a_q8_cpu_cache_decodes_speculatively_exactly_with_close_logits() =>
        CpuF16CacheTests.AssertExactAndClose(new CpuBackend(2, kvCacheType: GgmlType.Q8_0), new CpuBackend(2), "lookup", tolerance: 5e-2f);
}
