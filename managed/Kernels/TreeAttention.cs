using Engine.Backends;
using Engine.Backends.Cpu.Kernels;

namespace Engine.Cuda.Kernels;

/// <summary>
/// Typed launcher for kernels/tree_attention.cu (<c>tree_attention_f32</c>, then attention.cu's
/// <c>attention_combine_f32</c>). CPU reference: <see cref="Backends.Cpu.Kernels.TreeAttention.TreeAttentionF32"/>.
/// </summary>
public static class TreeAttention
{
    /// <summary>The largest head the kernel holds (TREE_MAX_HEAD_DIM).</summary>
    public const int MaxHeadDim = Backends.Cpu.Kernels.TreeAttention.MaxHeadDim;

    /// <summary>Whether heads of <paramref name="headDim"/> dimensions fit the kernel.</summary>
    public static bool Supports(int headDim) => headDim <= MaxHeadDim;

    /// <summary>The merge counters a launch of <paramref name="n"/> queries needs (one per KV head and item block).</summary>
    public static long Counters(int n, int heads, int kvHeads) => kvHeads * Blocking(n, heads, kvHeads).ItemBlocks;

    /// <summary>
    /// How a launch's (query, head) items are spread: pairs per warp, and item blocks (grid z). At least the
    /// whole GQA group goes in one block, so that each key tile is staged once per KV head.
    /// </summary>
    private static (int ItemsPerWarp, long ItemBlocks) Blocking(int n, int heads, int kvHeads)
    {
        int group = heads / kvHeads, items = n * group;
        int itemsPerWarp = Math.Max(ItemsPerWarp(items), Math.Min(4, (group + 3) / 4));
        return (itemsPerWarp, (items + 4L * itemsPerWarp - 1) / (4L * itemsPerWarp));
    }

    /// <summary>(query, head) pairs per warp: fewer for small launches, so that they still spread over many blocks.</summary>
    public static int ItemsPerWarp(int items) => items >= 256 ? 4 : items >= 64 ? 2 : 1;

    /// <summary>
    /// dst[i, h·hd..] = softmax over the keys query i sees of (q_i,h · k)·scale (soft-capped with
    /// <paramref name="softCap"/> &gt; 0), times v: the committed <paramref name="prefix"/> slots from the
    /// query's <paramref name="windowStarts"/> entry (all without) and batch slot prefix + j where the mask allows (a chain when
    /// <paramref name="mask"/> is empty). One launch for all queries and heads, then the combine — or, with
    /// <paramref name="counters"/> (at least <see cref="Counters"/> zeroed uints, left zero), the launch's last
    /// block per KV head merges the splits itself: one launch, the same bits. The cache holds float32
    /// (<typeparamref name="T"/> = float) or binary16 (Half) elements.
    /// </summary>
    public static unsafe void TreeAttentionF32<T>(GpuDevice device, DeviceSpan<float> q, int n, int heads, DeviceSpan<T> cache, int blocks,
        KvLayout layout, int layer, DeviceSpan<int> table, int tableLength, int prefix, DeviceSpan<ulong> mask, int words, float scale,
        DeviceSpan<float> scratch, DeviceSpan<float> dst, DeviceSpan<uint> counters = default, float softCap = 0,
        DeviceSpan<int> windowStarts = default, int maxRanks = 0) where T : unmanaged
    {
        string suffix = KvCache.Suffix<T>(); // tree_attention_f32 (float32 cache) or tree_attention_f16 (binary16)
        int hd = layout.HeadDim;
        Attention.CheckShapes("tree_attention_" + suffix, MaxHeadDim, q, n, heads, cache, blocks, layout, layer, table, tableLength, prefix, mask, words, dst);
        Attention.CheckLimits("tree_attention_" + suffix, n, softCap, windowStarts);
        int keys = maxRanks > 0 ? Math.Min(maxRanks, prefix + n) : prefix + n; // splits cover the most keys a query sees
        var (splits, chunk) = Backends.Cpu.Kernels.TreeAttention.Plan(keys);
        var (itemsPerWarp, itemBlocks) = Blocking(n, heads, layout.KvHeads);
        if (splits > 65535 || itemBlocks > 65535)
            throw new ArgumentOutOfRangeException(nameof(n), $"tree_attention_f32: {n} queries over {keys} keys exceed the grid");
        long parts = (long)n * heads * splits;
        if (scratch.Length < parts * (hd + 2))
            throw new ArgumentException($"tree_attention_f32: scratch of {scratch.Length} floats, {parts} partials need {parts * (hd + 2)}");
        bool fold = !counters.IsEmpty;
        if (fold && counters.Length < (long)layout.KvHeads * itemBlocks)
            throw new ArgumentException($"tree_attention_f32: {counters.Length} counters, {layout.KvHeads} kv heads × {itemBlocks} item blocks need {(long)layout.KvHeads * itemBlocks}");
        var accumulators = scratch.Slice(0, parts * hd);
        var maxSums = scratch.Slice(parts * hd, parts * 2);

        IntPtr pq = q.Pointer, pc = cache.Pointer, pt = table.Pointer, pm = mask.IsEmpty ? IntPtr.Zero : mask.Pointer, pd = dst.Pointer;
        IntPtr pa = accumulators.Pointer, pml = maxSums.Pointer;
        IntPtr pout = fold ? pd : IntPtr.Zero, pcount = fold ? counters.Pointer : IntPtr.Zero;
        IntPtr pw = windowStarts.IsEmpty ? IntPtr.Zero : windowStarts.Pointer;
        int layers = layout.Layers, kvHeads = layout.KvHeads, blockSize = layout.BlockSize;
        var fn = device.Function("tree_attention", "tree_attention_" + suffix);
        void** args = stackalloc void*[22];
        args[0] = &pq;
        args[1] = &pc;
        args[2] = &pt;
        args[3] = &layer;
        args[4] = &layers;
        args[5] = &heads;
        args[6] = &kvHeads;
        args[7] = &hd;
        args[8] = &blockSize;
        args[9] = &prefix;
        args[10] = &n;
        args[11] = &pm;
        args[12] = &words;
        args[13] = &scale;
        args[14] = &softCap;
        args[15] = &pw;
        args[16] = &chunk;
        args[17] = &itemsPerWarp;
        args[18] = &pa;
        args[19] = &pml;
        args[20] = &pout;
        args[21] = &pcount;
        device.Launch(fn, (kvHeads, splits, (int)itemBlocks), (128, 1, 1), 0, args);
        if (!fold)
            Attention.Combine(device, pa, pml, pd, n, heads, hd, splits);
    }
}
