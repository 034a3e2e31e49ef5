using Engine.Backends;
using Engine.Backends.Cpu;
using Engine.Tensors;

namespace Engine.Tests;

/// <summary>The attention tests' common set-up on the CPU backend: a KV store filled through StoreKv, and activations from arrays.</summary>
internal static class CpuKvFixture
{
    /// <summary>A store of <paramref name="blocks"/> blocks holding rows of k and v (kvHeads × headDim each) at slots 0.. of the table.</summary>
    public static KvStore Filled(CpuBackend cpu, KvLayout layout, int blocks, int layer, int[] table, float[] k, float[] v)
    {
        var store = cpu.CreateKvStore(layout, blocks);
        for (int b = 0; b < blocks; b++)
            store.EnsureBlock(b);
        int cols = layout.KvHeads * layout.HeadDim, tokens = k.Length / cols;
        using var kb = Upload(cpu, k);
        using var vb = Upload(cpu, v);
        cpu.StoreKv(store, layer, table, 0, new Activation(kb, tokens, cols), new Activation(vb, tokens, cols));
        return store;
    }

    /// <summary>A buffer holding <paramref name="values"/>.</summary>
    public static DeviceBuffer Upload(CpuBackend cpu, float[] values)
    {
        var buffer = cpu.Allocate(values.Length);
        values.CopyTo(((CpuBuffer)buffer).Data, 0);
        return buffer;
    }

    /// <summary>
    /// The copied-slot tests' store: 20 rows of keys in [0, 1) and values in (-1, 0] (<paramref name="layout"/>
    /// of 2 kv heads of 64, blocks of 16) stored at layer 1 through the table [2, 0], then slot 19 (block 0,
    /// offset 3) copied to block 3, offset 9.
    /// </summary>
    public static CpuKvStore StoredAndSlotCopied(CpuBackend cpu, KvLayout layout, out float[] k, out float[] v)
    {
        var store = (CpuKvStore)cpu.CreateKvStore(layout, 4);
        for (int b = 0; b < 4; b++)
            store.EnsureBlock(b);
        var rng = new Random(3);
        int cols = layout.KvHeads * layout.HeadDim;
        k = new float[20 * cols];
        v = new float[20 * cols];
        for (int i = 0; i < k.Length; i++)
        {
            k[i] = (float)rng.NextDouble();
            v[i] = -(float)rng.NextDouble();
        }
        using var kb = Upload(cpu, k);
        using var vb = Upload(cpu, v);
        cpu.StoreKv(store, 1, [2, 0], 0, new Activation(kb, 20, cols), new Activation(vb, 20, cols));
        store.CopySlot(0, 3, 3, 9);
        return store;
    }

    /// <summary>The cache-type attention tests' cases: (heads, kvHeads, headDim, blockSize, prefix, n, tree), named after <paramref name="cache"/>.</summary>
    public static IEnumerable<TestCaseData> AttentionCases(string cache)
    {
        yield return new TestCaseData(4, 2, 64, 32, 300, 1, false).SetName($"{cache} cache: decode after 300 (GQA, 64-wide heads)");
        yield return new TestCaseData(4, 4, 128, 32, 70, 9, false).SetName($"{cache} cache: 9-row causal batch after 70 (128-wide heads)");
        yield return new TestCaseData(2, 1, 64, 16, 45, 7, true).SetName($"{cache} cache: 7-node tree after 45");
        yield return new TestCaseData(2, 2, 48, 32, 33, 3, false).SetName($"{cache} cache: 48-wide heads (16-wide value kernel)");
    }
}

/// <summary>
/// One attention problem of <see cref="CpuKvFixture.AttentionCases"/>: random keys, values and queries, a
/// shuffled block table, a causal or tree mask; <see cref="Run"/> computes it on a cache of a given type.
/// </summary>
internal sealed class AttentionProblem
{
    private readonly KvLayout _layout;
    private readonly int _heads, _headDim, _prefix, _n, _blocks;
    private readonly int[] _table;
    private readonly float[] _q;
    private readonly AttentionMask _mask;
    private readonly float _scale;
    private const int Layer = 1;

    public AttentionProblem(int heads, int kvHeads, int headDim, int blockSize, int prefix, int n, bool tree)
    {
        _layout = new KvLayout(Layers: 2, KvHeads: kvHeads, HeadDim: headDim, BlockSize: blockSize);
        (_heads, _headDim, _prefix, _n) = (heads, headDim, prefix, n);
        int tokens = prefix + n;
        _blocks = (tokens + blockSize - 1) / blockSize;
        var rng = new Random(heads * 1000 + prefix + n);
        _table = Enumerable.Range(0, 2 * _blocks).OrderBy(_ => rng.Next()).Take(_blocks).ToArray();
        int cols = kvHeads * headDim;
        K = Enumerable.Range(0, tokens * cols).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray();
        V = Enumerable.Range(0, tokens * cols).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray();
        _q = Enumerable.Range(0, n * heads * headDim).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        _mask = tree ? AttentionMask.FromParents(Enumerable.Range(0, n).Select(i => i == 0 ? -1 : rng.Next(-1, i)).ToArray()) : AttentionMask.Causal;
        _scale = 1 / MathF.Sqrt(headDim);
    }

    public float[] K { get; }

    public float[] V { get; }

    /// <summary>
    /// The attention output of every row over <paramref name="keys"/> and <paramref name="values"/> stored
    /// in a cache of <paramref name="cacheType"/>: alone, or (<paramref name="batch"/>) as a continuous batch
    /// of two sequences over the same blocks — row 0 after the prefix, the rest after prefix + 1.
    /// </summary>
    public float[] Run(GgmlType cacheType, float[] keys, float[] values, bool batch)
    {
        using var cpu = new CpuBackend(2, kvCacheType: cacheType);
        using var store = CpuKvFixture.Filled(cpu, _layout, 2 * _blocks, Layer, _table, keys, values);
        using var qb = CpuKvFixture.Upload(cpu, _q);
        using var ob = cpu.Allocate(_q.Length);
        int width = _heads * _headDim;
        if (!batch)
            cpu.Attention(new Activation(qb, _n, width), store, Layer, _table, _prefix, _mask, _heads, _scale, new Activation(ob, _n, width));
        else
        {
            var both = new SequenceBatch();
            both.Add(1, _prefix, _table);
            if (_n > 1)
                both.Add(_n - 1, _prefix + 1, _table);
            cpu.AttentionBatch(new Activation(qb, _n, width), store, Layer, both, _heads, _scale, new Activation(ob, _n, width));
        }
        return [.. ((CpuBuffer)ob).Data];
    }
}
