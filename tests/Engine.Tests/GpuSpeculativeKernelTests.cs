using Engine.Backends;
using Engine.Backends.Cpu.Kernels;
using Engine.Cuda;

namespace Engine.Tests;

/// <summary>
/// The speculative kernels (tree attention, fused sampling, draft-verify acceptance) on the device or
/// the emulator, against their CPU references and against the properties exact speculative decoding
/// needs: a verified node's attention equals the same token's decode attention bit for bit.
/// </summary>
public abstract partial class GpuSuite
{
    private (float[] Cache, int[] Table, int Blocks) RandomCache(Random rng, KvLayout layout, int layer, int tokens, out float[] k, out float[] v)
    {
        int blocks = (tokens + layout.BlockSize - 1) / layout.BlockSize + 3;
        var table = Enumerable.Range(0, blocks).OrderBy(_ => rng.Next()).Take((tokens + layout.BlockSize - 1) / layout.BlockSize).ToArray();
        k = RandomFloats(rng, tokens * layout.KvHeads * layout.HeadDim);
        v = RandomFloats(rng, tokens * layout.KvHeads * layout.HeadDim);
        var cache = new float[blocks * KvCacheKernels.BlockFloats(layout)];
        KvCacheKernels.StoreKvF32(k, v, tokens, table, 0, cache, layout, layer);
        return (cache, table, blocks);
    }

    private float[] RunTreeAttention(float[] q, int n, int heads, float[] cache, int blocks, KvLayout layout, int layer, int[] table, int prefix,
        AttentionMask mask)
    {
        using var dcache = Device.Upload<float>(cache);
        using var dt = Device.Upload<int>(table);
        using var dq = Device.Upload<float>(q);
        using var dmask = mask.IsCausal ? null : Device.Upload<ulong>(mask.Bits[..(n * mask.WordsPerRow)]);
        using var scratch = Device.Allocate<float>(KvCacheKernels.ScratchFloats(heads, n, layout.HeadDim, prefix + n));
        using var dout = Device.Allocate<float>((long)n * heads * layout.HeadDim);
        Cuda.Kernels.TreeAttention.TreeAttentionF32(Device, dq, n, heads, dcache, blocks, layout, layer, dt, table.Length, prefix,
            dmask?.Span ?? default, mask.IsCausal ? 0 : mask.WordsPerRow, 1 / MathF.Sqrt(layout.HeadDim), scratch, dout);
        return Device.Download<float>(dout);
    }

    public static IEnumerable<TestCaseData> TreeAttentionCases()
    {
        yield return new TestCaseData(8, 2, 64, 16, 37, 1, false).SetName("tree attention: decode after 37, GQA 4:1");
        yield return new TestCaseData(32, 4, 64, 32, 300, 16, true).SetName("tree attention: 16 nodes after 300 (staged tiles, two splits), GQA 8:1");
        yield return new TestCaseData(4, 1, 128, 32, 100, 70, true).SetName("tree attention: 70 nodes (two mask words) after 100, MQA, head dim 128");
        yield return new TestCaseData(4, 4, 96, 8, 5, 9, false).SetName("tree attention: chain of 9 after 5, head dim 96");
        yield return new TestCaseData(8, 8, 8, 32, 0, 3, true).SetName("tree attention: tree of 3 with no prefix, head dim 8");
    }

    /// <summary>
    /// tree_attention_f32 against its CPU reference, which does the kernel's float operations in the
    /// kernel's order: on the emulator (the host's expf and fmaf, as .NET's) the results are identical;
    /// a GPU's expf may differ from the host's by an ulp or two, which moves a normalized output by a
    /// few ulps of the largest value (outputs are convex combinations of values in [-2, 2]).
    /// </summary>
    [TestCaseSource(nameof(TreeAttentionCases))]
    public void Tree_attention_matches_its_cpu_reference(int heads, int kvHeads, int headDim, int blockSize, int prefix, int n, bool tree)
    {
        var layout = new KvLayout(Layers: 2, KvHeads: kvHeads, HeadDim: headDim, BlockSize: blockSize);
        var rng = new Random(heads * 7919 + prefix * 31 + n);
        var (cache, table, blocks) = RandomCache(rng, layout, 1, prefix + n, out _, out _);
        var q = RandomFloats(rng, n * heads * headDim);
        var mask = tree ? AttentionMask.FromParents(Enumerable.Range(0, n).Select(i => i == 0 ? -1 : rng.Next(-1, i)).ToArray()) : AttentionMask.Causal;
        var expected = new float[q.Length];
        Backends.Cpu.Kernels.TreeAttention.TreeAttentionF32(q, n, heads, cache, layout, 1, table, prefix, mask, 1 / MathF.Sqrt(headDim), expected);
        var actual = RunTreeAttention(q, n, heads, cache, blocks, layout, 1, table, prefix, mask);
        double bound = Device.IsEmulator ? 0 : 8 * 2 * U * 2;
        for (int i = 0; i < expected.Length; i++)
            Assert.That(actual[i], Is.EqualTo(expected[i]).Within(bound), $"row {i / (heads * headDim)}, head {i / headDim % heads}, dim {i % headDim}");

        // And the plain split attention (a different order of the same sums): the bound of the attention test.
        var split = new float[q.Length];
        KvCacheKernels.AttentionF32(q, n, heads, cache, layout, 1, table, prefix, mask, 1 / MathF.Sqrt(headDim), split);
        double reorder = 2.0 * (prefix + n + headDim) * U * 4 + 1e-6;
        for (int i = 0; i < expected.Length; i++)
            Assert.That(actual[i], Is.EqualTo(split[i]).Within(reorder));
    }

    /// <summary>
    /// Batch invariance on the kernel itself: each node of a 40-node tree over a 300-token prefix gets,
    /// bit for bit, what a one-query launch gives the same token once its ancestors are committed
    /// before it (the accepted path compacted into the cache, as speculative decoding leaves it).
    /// </summary>
    [Test]
    public void A_tree_node_gets_the_attention_of_the_same_token_decoded_after_its_ancestors()
    {
        var layout = new KvLayout(Layers: 1, KvHeads: 2, HeadDim: 64, BlockSize: 16);
        int heads = 8, prefix = 300, n = 40, hd = layout.HeadDim;
        var rng = new Random(42);
        var parents = Enumerable.Range(0, n).Select(i => i == 0 ? -1 : rng.Next(-1, i)).ToArray();
        var (cache, table, blocks) = RandomCache(rng, layout, 0, prefix + n, out var k, out var v);
        var q = RandomFloats(rng, n * heads * hd);
        var tree = RunTreeAttention(q, n, heads, cache, blocks, layout, 0, table, prefix, AttentionMask.FromParents(parents));
        int kvCols = layout.KvHeads * hd;
        foreach (int node in new[] { 0, 5, 17, 39, n / 2 })
        {
            var path = new List<int>();
            for (int a = node; a >= 0; a = parents[a])
                path.Insert(0, a);
            // The sequence as decoding leaves it: the prefix, then the path's keys and values in order.
            int tokens = prefix + path.Count;
            var pk = new float[tokens * kvCols];
            var pv = new float[tokens * kvCols];
            Array.Copy(k, pk, prefix * kvCols);
            Array.Copy(v, pv, prefix * kvCols);
            for (int i = 0; i < path.Count; i++)
            {
                Array.Copy(k, (prefix + path[i]) * kvCols, pk, (prefix + i) * kvCols, kvCols);
                Array.Copy(v, (prefix + path[i]) * kvCols, pv, (prefix + i) * kvCols, kvCols);
            }
            int seqBlocks = (tokens + layout.BlockSize - 1) / layout.BlockSize;
            var seqTable = Enumerable.Range(0, seqBlocks).Reverse().ToArray();
            var seqCache = new float[seqBlocks * KvCacheKernels.BlockFloats(layout)];
            KvCacheKernels.StoreKvF32(pk, pv, tokens, seqTable, 0, seqCache, layout, 0);
            var alone = RunTreeAttention(q.AsSpan(node * heads * hd, heads * hd).ToArray(), 1, heads, seqCache, seqBlocks, layout, 0, seqTable,
                tokens - 1, AttentionMask.Causal);
            Assert.That(alone, Is.EqualTo(tree.AsSpan(node * heads * hd, heads * hd).ToArray()), $"node {node} (depth {path.Count})");
        }
    }
}
