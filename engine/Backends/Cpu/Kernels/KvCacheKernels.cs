namespace Engine.Backends.Cpu.Kernels;

/// <summary>
/// The device KV-cache layout and the split attention over it, on the host: CPU references of
/// kernels/kvcache.cu (<c>store_kv_f32</c>, <c>copy_slot_f32</c>) and kernels/attention.cu
/// (<c>attention_f32</c> + <c>attention_combine_f32</c>). The device keeps all blocks in one array,
/// <c>cache[block][layer][K|V][kvHead][slot][headDim]</c>, so one key is headDim consecutive floats —
/// what a warp reads in one coalesced load. Attention splits the keys into chunks as flash-decoding
/// does (Dao et al., "Flash-Decoding for long-context inference", 2023): each chunk keeps a running
/// max, sum and weighted value sum (Milakov &amp; Gimelshein, "Online normalizer calculation for
/// softmax", 2018), and the chunks are merged by rescaling to the common max. <see cref="Plan"/> is the
/// split the CUDA launcher uses. Keys are numbered by rank among those a row sees — the prefix, then
/// the batch slots its mask allows, in slot order — and split by rank, so a row's arithmetic does not
/// depend on the rest of the batch. Batches of more than <see cref="PrefillMinRows"/> rows take the tiled
/// kernel <c>attention_prefill_f32</c> instead (FlashAttention's loop on CUDA cores), whose reference
/// is <see cref="AttentionPrefillF32"/>.
/// </summary>
public static class KvCacheKernels
{
    /// <summary>Keys per split: split s takes the keys of rank 256·s .. 256·s + 255 among those a row sees.</summary>
    public const int KeysPerSplit = 256;

    /// <summary>Batches of more rows than this use the tiled prefill kernel (when the head fits it).</summary>
    public const int PrefillMinRows = 8;

    /// <summary>Largest head the tiled prefill kernel holds (PREFILL_MAX_HEAD_DIM).</summary>
    public const int PrefillMaxHeadDim = 128;

    /// <summary>Query rows per block of the tiled kernel, and keys per tile.</summary>
    public const int PrefillRows = 16, PrefillKeys = 32;

    /// <summary>
    /// Whether the CUDA launcher runs <c>attention_prefill_f32</c> for a batch of <paramref name="rows"/>:
    /// not when the batch must be computed as its rows would be alone (the tiled kernel's order
    /// depends on the batch).
    /// </summary>
    public static bool UsesPrefillKernel(int rows, int headDim, bool batchInvariant = false) =>
        !batchInvariant && rows > PrefillMinRows && headDim <= PrefillMaxHeadDim;

    /// <summary>
    /// How attention over at most <paramref name="keys"/> visible keys per row is split: (splits, keys per
    /// split). The split size is fixed, so a row's splits depend on the keys it sees and nothing else —
    /// the batch invariance exact verification needs; a long context spreads one decoding token over
    /// more blocks.
    /// </summary>
    public static (int Splits, int Chunk) Plan(int keys) => (Math.Max(1, (keys + KeysPerSplit - 1) / KeysPerSplit), KeysPerSplit);

    /// <summary>Floats of partial results a pass of <paramref name="rows"/> rows needs over at most <paramref name="maxKeys"/> keys
    /// (the tree kernel's smaller splits when they are more).</summary>
    public static long ScratchFloats(int heads, int rows, int headDim, int maxKeys) =>
        (long)rows * heads * Math.Max(Plan(maxKeys).Splits, TreeAttention.Plan(maxKeys).Splits) * (headDim + 2);

    /// <summary>Floats of one block: every layer's K and V.</summary>
    public static long BlockFloats(KvLayout layout) => 2L * layout.Layers * layout.LayerBlockFloats;

    /// <summary>Index of element 0 of (block, layer, K = 0 | V = 1, kvHead, slot).</summary>
    public static long Index(KvLayout layout, int block, int layer, int kind, int kvHead, int slot) =>
        ((((long)block * layout.Layers + layer) * 2 + kind) * layout.KvHeads + kvHead) * ((long)layout.BlockSize * layout.HeadDim)
        + (long)slot * layout.HeadDim;

    /// <summary>store_kv_f32: row r of k and v ([n, kvHeads·headDim]) into slot firstSlot + r of one layer.</summary>
    public static void StoreKvF32(ReadOnlySpan<float> k, ReadOnlySpan<float> v, int n, ReadOnlySpan<int> table, int firstSlot, Span<float> cache,
        KvLayout layout, int layer)
    {
        int hd = layout.HeadDim, cols = layout.KvHeads * hd;
        for (int r = 0; r < n; r++)
        {
            int slot = firstSlot + r;
            int block = table[slot / layout.BlockSize], offset = slot % layout.BlockSize;
            for (int h = 0; h < layout.KvHeads; h++)
            {
                k.Slice(r * cols + h * hd, hd).CopyTo(cache.Slice((int)Index(layout, block, layer, 0, h, offset), hd));
                v.Slice(r * cols + h * hd, hd).CopyTo(cache.Slice((int)Index(layout, block, layer, 1, h, offset), hd));
            }
        }
    }

    /// <summary>copy_slot_f32: one token's K and V in every layer from (srcBlock, srcSlot) to (dstBlock, dstSlot).</summary>
    public static void CopySlotF32(Span<float> cache, KvLayout layout, int srcBlock, int srcSlot, int dstBlock, int dstSlot)
    {
        for (int layer = 0; layer < layout.Layers; layer++)
        {
            for (int kind = 0; kind < 2; kind++)
            {
                for (int h = 0; h < layout.KvHeads; h++)
                {
                    cache.Slice((int)Index(layout, srcBlock, layer, kind, h, srcSlot), layout.HeadDim)
                        .CopyTo(cache.Slice((int)Index(layout, dstBlock, layer, kind, h, dstSlot), layout.HeadDim));
                }
            }
        }
    }

    /// <summary>
    /// attention_f32 + attention_combine_f32 for every (row, head): row i of q ([n, heads·headDim])
    /// sees slots 0..prefix-1 and batch slot prefix + j where <paramref name="mask"/> allows (i, j).
    /// Each split runs the online softmax over its keys in order; the splits are merged as the combine
    /// kernel does. (The kernel also splits a chunk across 4 warps; that only reorders float sums.)
    /// </summary>
    public static void AttentionF32(ReadOnlySpan<float> q, int n, int heads, ReadOnlySpan<float> cache, KvLayout layout, int layer,
        ReadOnlySpan<int> table, int prefix, AttentionMask mask, float scale, Span<float> dst, float softCap = 0, ReadOnlySpan<int> windowStarts = default)
    {
        int hd = layout.HeadDim;
        int group = heads / layout.KvHeads;
        var (splits, chunk) = Plan(prefix + n);
        var m = new float[splits];
        var l = new float[splits];
        var acc = new float[splits * hd];
        var visible = new int[prefix + n];
        for (int row = 0; row < n; row++)
        {
            int count = VisibleSlots(row, prefix, n, mask, visible, WindowStart(windowStarts, row));
            for (int head = 0; head < heads; head++)
            {
                var qh = q.Slice((row * heads + head) * hd, hd);
                int kvHead = head / group;
                Array.Fill(m, float.NegativeInfinity);
                Array.Clear(l);
                Array.Clear(acc);
                for (int s = 0; s < splits; s++)
                {
                    for (int r = s * chunk; r < Math.Min((s + 1) * chunk, count); r++)
                    {
                        int t = visible[r];
                        int block = table[t / layout.BlockSize], slot = t % layout.BlockSize;
                        var key = cache.Slice((int)Index(layout, block, layer, 0, kvHead, slot), hd);
                        var value = cache.Slice((int)Index(layout, block, layer, 1, kvHead, slot), hd);
                        float dot = 0;
                        for (int d = 0; d < hd; d++)
                            dot = MathF.FusedMultiplyAdd(qh[d], key[d], dot);
                        float score = SoftCap(dot * scale, softCap);
                        float mNew = MathF.Max(m[s], score);
                        float correction = MathF.Exp(m[s] - mNew);
                        float p = MathF.Exp(score - mNew);
                        l[s] = l[s] * correction + p;
                        for (int d = 0; d < hd; d++)
                            acc[s * hd + d] = acc[s * hd + d] * correction + p * value[d];
                        m[s] = mNew;
                    }
                }
                Combine(m, l, acc, splits, hd, dst.Slice((row * heads + head) * hd, hd));
            }
        }
    }

    /// <summary>
    /// The slots batch row <paramref name="row"/> sees, by rank — the prefix from <paramref name="windowStart"/>
    /// on, then the batch slots its mask allows, in slot order — into <paramref name="visible"/>; returns how
    /// many. (The kernels' common.cuh: visible_keys and rank_slot.)
    /// </summary>
    public static int VisibleSlots(int row, int prefix, int n, AttentionMask mask, Span<int> visible, int windowStart = 0)
    {
        int count = 0;
        for (int t = windowStart; t < prefix + n; t++)
        {
            if (t < prefix || (mask.IsCausal ? t - prefix <= row : mask.Allows(row, t - prefix)))
                visible[count++] = t;
        }
        return count;
    }

    /// <summary>The first slot row <paramref name="row"/> sees: its window start, or 0 without a window (common.cuh: window_start).</summary>
    public static int WindowStart(ReadOnlySpan<int> windowStarts, int row) => windowStarts.IsEmpty ? 0 : windowStarts[row];

    /// <summary>Gemma 2's soft-capping, cap·tanh(s / cap), or s for cap = 0 (common.cuh: soft_cap).</summary>
    public static float SoftCap(float s, float cap) => cap > 0 ? cap * MathF.Tanh(s / cap) : s;

    /// <summary>
    /// attention_combine_f32 for one (row, head): the splits' partials (max <paramref name="m"/>, sum
    /// <paramref name="l"/>, values <paramref name="acc"/> [splits, headDim]) rescaled to the common max
    /// and normalized; a split with max −∞ saw no key and is skipped.
    /// </summary>
    public static void Combine(ReadOnlySpan<float> m, ReadOnlySpan<float> l, ReadOnlySpan<float> acc, int splits, int hd, Span<float> output)
    {
        float max = float.NegativeInfinity;
        for (int s = 0; s < splits; s++)
            max = MathF.Max(max, m[s]);
        float den = 0;
        for (int s = 0; s < splits; s++)
        {
            if (m[s] != float.NegativeInfinity)
                den += MathF.Exp(m[s] - max) * l[s];
        }
        float inv = den > 0 ? 1 / den : 0;
        for (int d = 0; d < hd; d++)
        {
            float num = 0;
            for (int s = 0; s < splits; s++)
            {
                if (m[s] != float.NegativeInfinity)
                    num += MathF.Exp(m[s] - max) * acc[s * hd + d];
            }
            output[d] = num * inv;
        }
    }

    /// <summary>
    /// attention_prefill_f32: the same attention as <see cref="AttentionF32"/>, in the tiled kernel's
    /// order — rows in blocks of 16, keys in tiles of 32 up to the block's last visible key; per tile
    /// the running max moves to the tile's visible max, the tile's weights are added to the sum, and
    /// the values are accumulated key by key.
    /// </summary>
    public static void AttentionPrefillF32(ReadOnlySpan<float> q, int n, int heads, ReadOnlySpan<float> cache, KvLayout layout, int layer,
        ReadOnlySpan<int> table, int prefix, AttentionMask mask, float scale, Span<float> dst, float softCap = 0, ReadOnlySpan<int> windowStarts = default)
    {
        int hd = layout.HeadDim;
        int group = heads / layout.KvHeads;
        var scores = new float[PrefillKeys];
        var acc = new float[hd];
        for (int row = 0; row < n; row++)
        {
            int blockRows = Math.Min(PrefillRows, n - row / PrefillRows * PrefillRows);
            int first = row / PrefillRows * PrefillRows;
            int end = mask.IsCausal ? prefix + first + blockRows : prefix + n;
            // the kernel's first tile: the smallest window start of the block's rows
            int start = WindowStart(windowStarts, first);
            for (int r = first + 1; r < first + blockRows && !mask.IsCausal; r++)
                start = Math.Min(start, WindowStart(windowStarts, r));
            int lo = WindowStart(windowStarts, row);
            for (int head = 0; head < heads; head++)
            {
                var qh = q.Slice((row * heads + head) * hd, hd);
                int kvHead = head / group;
                float m = float.NegativeInfinity, l = 0;
                Array.Clear(acc);
                for (int t0 = start; t0 < end; t0 += PrefillKeys)
                {
                    float tileMax = float.NegativeInfinity;
                    for (int j = 0; j < PrefillKeys; j++)
                    {
                        int t = t0 + j;
                        bool visible = t < end && t >= lo && (t < prefix || (mask.IsCausal ? t - prefix <= row : mask.Allows(row, t - prefix)));
                        scores[j] = float.NegativeInfinity;
                        if (!visible)
                            continue;
                        var key = cache.Slice((int)Index(layout, table[t / layout.BlockSize], layer, 0, kvHead, t % layout.BlockSize), hd);
                        float dot = 0;
                        for (int d = 0; d < hd; d++)
                            dot = MathF.FusedMultiplyAdd(qh[d], key[d], dot);
                        scores[j] = SoftCap(dot * scale, softCap);
                        tileMax = MathF.Max(tileMax, scores[j]);
                    }
                    if (tileMax == float.NegativeInfinity)
                        continue;
                    float mNew = MathF.Max(m, tileMax);
                    float correction = MathF.Exp(m - mNew);
                    float sum = 0;
                    for (int j = 0; j < PrefillKeys; j++)
                    {
                        scores[j] = MathF.Exp(scores[j] - mNew);
                        sum += scores[j];
                    }
                    l = l * correction + sum;
                    for (int d = 0; d < hd; d++)
                        acc[d] *= correction;
                    for (int j = 0; j < PrefillKeys; j++)
                    {
                        int t = t0 + j;
                        if (t >= end)
                            break;
                        var value = cache.Slice((int)Index(layout, table[t / layout.BlockSize], layer, 1, kvHead, t % layout.BlockSize), hd);
                        for (int d = 0; d < hd; d++)
                            acc[d] = MathF.FusedMultiplyAdd(scores[j], value[d], acc[d]);
                    }
                    m = mNew;
                }
                var output = dst.Slice((row * heads + head) * hd, hd);
                float inv = l > 0 ? 1 / l : 0;
                for (int d = 0; d < hd; d++)
                    output[d] = acc[d] * inv;
            }
        }
    }
}
