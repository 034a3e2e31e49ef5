using Engine.Backends;
using Engine.Backends.Cpu;
using Engine.Backends.Cpu.Kernels;
using Engine.Tensors;

namespace Engine.Tests;

/// <summary>
/// The CPU references of the CUDA kernels, checked on the CPU (so in CI, without a GPU): the split
/// attention over the device KV layout against the CPU backend's attention, the split plan, the gemv
/// reference against a double-precision product, and the small references (argmax, bias, gather).
/// </summary>
public class DeviceReferenceTests
{
    private const double U = 1.0 / (1 << 24);

    private static float[] RandomFloats(Random rng, int n) => Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray();

    public static IEnumerable<TestCaseData> AttentionCases()
    {
        // (heads, kvHeads, headDim, blockSize, prefix, n, tree)
        yield return new TestCaseData(8, 4, 8, 32, 0, 1, false).SetName("split attention: first token");
        yield return new TestCaseData(8, 2, 64, 16, 37, 1, false).SetName("split attention: decode after 37, GQA");
        yield return new TestCaseData(4, 4, 32, 32, 2000, 1, false).SetName("split attention: decode after 2000 (8 splits)");
        yield return new TestCaseData(2, 1, 16, 8, 600, 3, false).SetName("split attention: 3 rows after 600 (splits of uneven fill)");
        yield return new TestCaseData(4, 4, 24, 32, 0, 45, false).SetName("split attention: causal prefill of 45");
        yield return new TestCaseData(4, 1, 16, 32, 300, 13, true).SetName("split attention: tree of 13 after 300");
        yield return new TestCaseData(2, 2, 8, 8, 70, 70, true).SetName("split attention: tree of 70 (two mask words)");
        yield return new TestCaseData(8, 4, 8, 32, 5, 37, false).SetName("split attention: causal 37 after 5 (row blocks of 16 end mid-tile)");
    }

    /// <summary>
    /// KvCacheKernels.AttentionF32 — the arithmetic of attention_f32 + attention_combine_f32 on the device
    /// layout — and AttentionPrefillF32 (attention_prefill_f32's tiles) against the CPU backend's
    /// attention over its own layout, filled through StoreKv. Same
    /// float32 inputs; the two differ in summation order (splits, online rescaling), bounded as in the
    /// GPU test: 2·(keys + headDim)·u times the largest |q·k| (4 here, values in [-2, 2]).
    /// </summary>
    [TestCaseSource(nameof(AttentionCases))]
    public void Split_attention_on_the_device_layout_matches_the_cpu_backend(int heads, int kvHeads, int headDim, int blockSize, int prefix, int n, bool tree)
    {
        var layout = new KvLayout(Layers: 2, KvHeads: kvHeads, HeadDim: headDim, BlockSize: blockSize);
        int layer = 1, tokens = prefix + n, blocks = (tokens + blockSize - 1) / blockSize + 2;
        var rng = new Random(heads * 1000 + prefix + n);
        var table = Enumerable.Range(0, blocks).OrderBy(_ => rng.Next()).Take((tokens + blockSize - 1) / blockSize).ToArray();
        var k = RandomFloats(rng, tokens * kvHeads * headDim);
        var v = RandomFloats(rng, tokens * kvHeads * headDim);
        var q = Enumerable.Range(0, n * heads * headDim).Select(_ => (float)(rng.NextDouble() * 2 - 1) / MathF.Sqrt(headDim)).ToArray();
        var mask = tree ? AttentionMask.FromParents(Enumerable.Range(0, n).Select(i => i == 0 ? -1 : rng.Next(-1, i)).ToArray()) : AttentionMask.Causal;
        float scale = 1 / MathF.Sqrt(headDim);

        var cache = new float[blocks * KvCacheKernels.BlockFloats(layout)];
        KvCacheKernels.StoreKvF32(k, v, tokens, table, 0, cache, layout, layer);
        var actual = new float[n * heads * headDim];
        KvCacheKernels.AttentionF32(q, n, heads, cache, layout, layer, table, prefix, mask, scale, actual);
        var tiled = new float[n * heads * headDim];
        KvCacheKernels.AttentionPrefillF32(q, n, heads, cache, layout, layer, table, prefix, mask, scale, tiled);

        using var cpu = new CpuBackend(1);
        using var store = CpuKvFixture.Filled(cpu, layout, blocks, layer, table, k, v);
        using var qb = CpuKvFixture.Upload(cpu, q);
        using var ob = cpu.Allocate(q.Length);
        cpu.Attention(new Activation(qb, n, heads * headDim), store, layer, table, prefix, mask, heads, scale, new Activation(ob, n, heads * headDim));
        var expected = ((CpuBuffer)ob).Data;

        double bound = 2.0 * (tokens + headDim) * U * 4 + 1e-6;
        for (int i = 0; i < actual.Length; i++)
        {
            Assert.That(actual[i], Is.EqualTo(expected[i]).Within(bound), $"split: row {i / (heads * headDim)}, head {i / headDim % heads}, dim {i % headDim}");
            Assert.That(tiled[i], Is.EqualTo(expected[i]).Within(bound), $"tiled: row {i / (heads * headDim)}, head {i / headDim % heads}, dim {i % headDim}");
        }
    }

    [Test]
    public void The_split_plan_covers_every_key_and_fits_the_scratch()
    {
        foreach (int keys in new[] { 1, 63, 64, 65, 255, 256, 257, 4096, 100_000 })
        {
            foreach (var (plan, fixedChunk) in new[] { (KvCacheKernels.Plan(keys), KvCacheKernels.KeysPerSplit), (TreeAttention.Plan(keys), TreeAttention.KeysPerSplit) })
            {
                var (splits, chunk) = plan;
                Assert.That(chunk, Is.EqualTo(fixedChunk), "a fixed split size: a row's splits depend only on its keys");
                Assert.That((long)splits * chunk, Is.GreaterThanOrEqualTo(keys), $"{keys} keys");
                Assert.That((long)(splits - 1) * chunk, Is.LessThan(keys), "no split lies wholly past the last key");
            }
            // The scratch holds the partials of whichever kernel splits more (the tree kernel's 64-rank splits).
            Assert.That(KvCacheKernels.ScratchFloats(32, 3, 64, keys), Is.EqualTo(3L * 32 * TreeAttention.Plan(keys).Splits * 66));
        }
        Assert.That(KvCacheKernels.Plan(4096).Splits, Is.EqualTo(16), "attention_f32: a long decode spreads over 16 splits of 256 keys");
        Assert.That(TreeAttention.Plan(1024).Splits, Is.EqualTo(16), "tree attention (decoding): 16 splits of 64 keys at context 1024");
    }

    /// <summary>
    /// Batch invariance of the split reference (the kernel's arithmetic): a tree node's output equals,
    /// bit for bit, the output of the same query decoded alone after its ancestors placed as a prefix.
    /// </summary>
    [Test]
    public void Split_attention_of_a_tree_node_equals_decoding_it_after_its_ancestors()
    {
        var layout = new KvLayout(Layers: 1, KvHeads: 2, HeadDim: 16, BlockSize: 8);
        int heads = 4, prefix = 300, hd = 16, cols = 2 * hd;
        int[] parents = [-1, 0, 0, 1, 2, 3, 3, 6];
        var rng = new Random(12);
        var kv = RandomFloats(rng, (prefix + parents.Length) * cols);
        var vv = RandomFloats(rng, (prefix + parents.Length) * cols);
        var q = RandomFloats(rng, parents.Length * heads * hd);
        float scale = 0.25f;
        var mask = AttentionMask.FromParents(parents);
        int blocks = 64;
        var table = Enumerable.Range(0, blocks).ToArray();
        var cache = new float[blocks * KvCacheKernels.BlockFloats(layout)];
        KvCacheKernels.StoreKvF32(kv, vv, prefix + parents.Length, table, 0, cache, layout, 0);
        var tree = new float[q.Length];
        KvCacheKernels.AttentionF32(q, parents.Length, heads, cache, layout, 0, table, prefix, mask, scale, tree);

        for (int node = 0; node < parents.Length; node++)
        {
            var path = new List<int>();
            for (int a = node; a >= 0; a = parents[a])
                path.Insert(0, a);
            // The same keys as a sequence: the prefix, then the path's tokens in order, the node last.
            var seqK = kv.AsSpan(0, prefix * cols).ToArray().Concat(path.SelectMany(a => kv.AsSpan((prefix + a) * cols, cols).ToArray())).ToArray();
            var seqV = vv.AsSpan(0, prefix * cols).ToArray().Concat(path.SelectMany(a => vv.AsSpan((prefix + a) * cols, cols).ToArray())).ToArray();
            var seqCache = new float[cache.Length];
            KvCacheKernels.StoreKvF32(seqK, seqV, prefix + path.Count, table, 0, seqCache, layout, 0);
            var alone = new float[heads * hd];
            KvCacheKernels.AttentionF32(q.AsSpan(node * heads * hd, heads * hd), 1, heads, seqCache, layout, 0, table, prefix + path.Count - 1,
                AttentionMask.Causal, scale, alone);
            Assert.That(tree.AsSpan(node * heads * hd, heads * hd).ToArray(), Is.EqualTo(alone), $"node {node}");
        }
    }

    [Test]
    public void Store_and_copy_slot_address_the_device_layout()
    {
        var layout = new KvLayout(Layers: 3, KvHeads: 2, HeadDim: 4, BlockSize: 8);
        var cache = new float[4 * KvCacheKernels.BlockFloats(layout)];
        int[] table = [2, 0];
        float[] k = Enumerable.Range(0, 10 * 8).Select(i => (float)i).ToArray();
        float[] v = k.Select(x => -x - 1).ToArray();
        KvCacheKernels.StoreKvF32(k, v, 10, table, 0, cache, layout, layer: 1);
        // Token 9 is slot 1 of block 0; its kv head 1 starts at element 9·8 + 4 of k.
        Assert.That(cache.AsSpan((int)KvCacheKernels.Index(layout, 0, 1, 0, 1, 1), 4).ToArray(), Is.EqualTo(new float[] { 76, 77, 78, 79 }));
        Assert.That(cache.AsSpan((int)KvCacheKernels.Index(layout, 2, 1, 1, 0, 3), 4).ToArray(), Is.EqualTo(new float[] { -25, -26, -27, -28 }));
        KvCacheKernels.CopySlotF32(cache, layout, 0, 1, 3, 7);
        Assert.That(cache.AsSpan((int)KvCacheKernels.Index(layout, 3, 1, 0, 1, 7), 4).ToArray(), Is.EqualTo(new float[] { 76, 77, 78, 79 }));
        Assert.That(cache.AsSpan((int)KvCacheKernels.Index(layout, 3, 0, 0, 1, 7), 4).ToArray(), Is.EqualTo(new float[4]), "layer 0 of the source slot was never written");
    }

    public static IEnumerable<GgmlType> WeightTypes() =>
        [GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_K, GgmlType.Q6_K];

    [Test]
    public void Gemv_reference_matches_a_double_precision_product([ValueSource(nameof(WeightTypes))] GgmlType type)
    {
        int qk = GgmlTypeInfo.Layout(type)!.Value.BlockSize;
        int cols = qk == 1 ? 70 : qk * 3, rows = 13, ncols = 3;
        var rng = new Random((int)type);
        var floats = RandomFloats(rng, rows * cols);
        long rowBytes = GgmlTypeInfo.RowBytes(type, cols);
        var w = new byte[rowBytes * rows];
        for (int r = 0; r < rows; r++)
            Quantization.Quantize.Row(type, floats.AsSpan(r * cols, cols), w.AsSpan((int)(r * rowBytes), (int)rowBytes));
        var x = RandomFloats(rng, ncols * cols);
        var y = new float[ncols * rows];
        Gemv.Run(type, w, rows, cols, x, ncols, y);
        var row = new float[cols];
        for (int r = 0; r < rows; r++)
        {
            Quantization.Dequantize.Row(type, w.AsSpan((int)(r * rowBytes), (int)rowBytes), row);
            for (int c = 0; c < ncols; c++)
            {
                double exact = 0, magnitude = 0;
                for (int i = 0; i < cols; i++)
                {
                    exact += (double)row[i] * x[c * cols + i];
                    magnitude += Math.Abs((double)row[i] * x[c * cols + i]);
                }
                // y is [ncols, rows]: activation row c, weight row r. Recursive float summation: γ_n·Σ|terms|.
                Assert.That(y[c * rows + r], Is.EqualTo(exact).Within(cols * U * magnitude), $"row {r}, activation row {c}");
            }
        }
    }

    [Test]
    public void Get_rows_reference_gathers_dequantized_rows_and_rejects_bad_ids()
    {
        int cols = 64;
        var floats = RandomFloats(new Random(1), 5 * cols);
        var table = new byte[5 * GgmlTypeInfo.RowBytes(GgmlType.Q8_0, cols)];
        for (int r = 0; r < 5; r++)
            Quantization.Quantize.Row(GgmlType.Q8_0, floats.AsSpan(r * cols, cols), table.AsSpan(r * 68, 68));
        var dst = new float[2 * cols];
        GetRows.GetRowsQ8_0(table, cols, [4, 1], dst);
        var expected = new float[cols];
        Quantization.Dequantize.Row(GgmlType.Q8_0, table.AsSpan(4 * 68, 68), expected);
        Assert.That(dst.AsSpan(0, cols).ToArray(), Is.EqualTo(expected));
        Assert.That(dst[cols], Is.EqualTo(floats[cols]).Within(0.02), "row 1, first value, to Q8_0 precision");
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => GetRows.GetRowsQ8_0(table, cols, [5], dst))!;
        Assert.That(e.Message, Does.Contain("row 5 is outside the table's 5 rows"));
    }

    [Test]
    public void ArgMax_and_bias_references()
    {
        Assert.That(Activations.ArgMaxF32([1, 3, 3, 2]), Is.EqualTo(1), "the first maximum");
        Assert.That(Activations.ArgMaxF32([float.NaN, 1, float.NaN, 0.5f]), Is.EqualTo(1), "NaN never wins");
        Assert.That(Activations.ArgMaxF32([float.NegativeInfinity, float.NegativeInfinity]), Is.EqualTo(0));
        float[] x = [1, 2, 3, 4, 5, 6];
        Activations.AddBiasF32(x, [10, 20, 30]);
        Assert.That(x, Is.EqualTo(new float[] { 11, 22, 33, 14, 25, 36 }));
        var halves = new Half[3];
        DequantizeF16.ConvertF32F16([1.00048828125f, 65520f, -0.1f], halves); // halfway between 1 and 1+2^-10: to even
        Assert.That(halves, Is.EqualTo(new[] { (Half)1f, Half.PositiveInfinity, (Half)(-0.1f) }));
    }
}
