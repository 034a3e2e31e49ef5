namespace Engine.Backends.Cpu.Kernels;

/// <summary>
/// CPU reference of kernels/tree_attention.cu (<c>tree_attention_f32</c>, merged by
/// <c>attention_combine_f32</c>): each (query, head) walks the keys it sees by rank — the prefix, then
/// its visible batch slots in slot order — in splits of <see cref="KeysPerSplit"/> ranks,
/// each split in tiles of <see cref="Keys"/> ranks from its start. Per tile the operations are the
/// kernel's, in its order: a sequential fused multiply-add for each score, the tile's max, the sum of
/// the tile's weights in a warp's butterfly order, then the running sum and the values updated with
/// fused multiply-adds key by key. What a query computes therefore depends on its own keys alone —
/// the batch invariance that makes a verified draft token equal to the same token decoded alone.
/// </summary>
public static class TreeAttention
{
    /// <summary>Keys per tile (TREE_KEYS) and the largest head the kernel holds (TREE_MAX_HEAD_DIM).</summary>
    public const int Keys = 32, MaxHeadDim = 128;

    /// <summary>
    /// Ranks per split: split s takes ranks 64·s .. 64·s + 63 of the keys a query sees. Fixed, so a query's
    /// splits depend on its own keys alone (the batch invariance); small, so that one decoding token
    /// spreads over many blocks — flash-decoding's point (16 splits per KV head at context 1024, where
    /// 256-rank splits gave 4 and left most of a large GPU idle).
    /// </summary>
    public const int KeysPerSplit = 64;

    /// <summary>How a query over at most <paramref name="keys"/> keys is split: (splits, ranks per split).</summary>
    public static (int Splits, int Chunk) Plan(int keys) => (Math.Max(1, (keys + KeysPerSplit - 1) / KeysPerSplit), KeysPerSplit);

    /// <summary>tree_attention_f32 + attention_combine_f32 over every (row, head); arguments as <see cref="KvCacheKernels.AttentionF32"/>.</summary>
    public static void TreeAttentionF32(ReadOnlySpan<float> q, int n, int heads, ReadOnlySpan<float> cache, KvLayout layout, int layer,
        ReadOnlySpan<int> table, int prefix, AttentionMask mask, float scale, Span<float> dst, float softCap = 0, ReadOnlySpan<int> windowStarts = default)
    {
        int hd = layout.HeadDim;
        if (hd > MaxHeadDim)
            throw new ArgumentOutOfRangeException(nameof(layout), $"tree attention holds heads of up to {MaxHeadDim} dimensions, not {hd}");
        int group = heads / layout.KvHeads;
        var (splits, chunk) = Plan(prefix + n);
        var m = new float[splits];
        var l = new float[splits];
        var acc = new float[splits * hd];
        var visible = new int[prefix + n];
        var scores = new float[Keys];
        var lanes = new float[Keys];
        for (int row = 0; row < n; row++)
        {
            int count = KvCacheKernels.VisibleSlots(row, prefix, n, mask, visible, KvCacheKernels.WindowStart(windowStarts, row));
            for (int head = 0; head < heads; head++)
            {
                var qh = q.Slice((row * heads + head) * hd, hd);
                int kvHead = head / group;
                for (int s = 0; s < splits; s++)
                {
                    float ms = float.NegativeInfinity, ls = 0;
                    var a = acc.AsSpan(s * hd, hd);
                    a.Clear();
                    int limit = Math.Min((s + 1) * chunk, count);
                    for (int t0 = s * chunk; t0 < limit; t0 += Keys)
                    {
                        int keys = Math.Min(Keys, limit - t0);
                        float tileMax = float.NegativeInfinity;
                        for (int j = 0; j < Keys; j++)
                        {
                            scores[j] = float.NegativeInfinity;
                            if (j >= keys)
                                continue;
                            int t = visible[t0 + j];
                            var key = cache.Slice((int)KvCacheKernels.Index(layout, table[t / layout.BlockSize], layer, 0, kvHead, t % layout.BlockSize), hd);
                            float dot = 0;
                            for (int d = 0; d < hd; d++)
                                dot = MathF.FusedMultiplyAdd(qh[d], key[d], dot);
                            scores[j] = KvCacheKernels.SoftCap(dot * scale, softCap);
                            tileMax = MathF.Max(tileMax, scores[j]);
                        }
                        float mNew = MathF.Max(ms, tileMax);
                        float correction = MathF.Exp(ms - mNew);
                        for (int j = 0; j < Keys; j++)
                            lanes[j] = scores[j] = MathF.Exp(scores[j] - mNew);
                        ls = MathF.FusedMultiplyAdd(ls, correction, WarpSum(lanes));
                        for (int d = 0; d < hd; d++)
                            a[d] *= correction;
                        for (int j = 0; j < keys; j++)
                        {
                            int t = visible[t0 + j];
                            var value = cache.Slice((int)KvCacheKernels.Index(layout, table[t / layout.BlockSize], layer, 1, kvHead, t % layout.BlockSize), hd);
                            for (int d = 0; d < hd; d++)
                                a[d] = MathF.FusedMultiplyAdd(scores[j], value[d], a[d]);
                        }
                        ms = mNew;
                    }
                    m[s] = ms;
                    l[s] = ls;
                }
                KvCacheKernels.Combine(m, l, acc, splits, hd, dst.Slice((row * heads + head) * hd, hd));
            }
        }
    }

    /// <summary>
    /// The sum a warp's butterfly (<c>warp_reduce_sum</c>: lanes exchange across 16, 8, 4, 2, 1) leaves in
    /// lane 0. Destroys <paramref name="lanes"/> (32 values).
    /// </summary>
    public static float WarpSum(Span<float> lanes)
    {
        Span<float> next = stackalloc float[Keys];
        for (int offset = Keys / 2; offset > 0; offset >>= 1)
        {
            for (int i = 0; i < Keys; i++)
                next[i] = lanes[i] + lanes[i ^ offset];
            next.CopyTo(lanes);
        }
        return lanes[0];
    }
}
