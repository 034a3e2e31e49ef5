using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Engine.Backends.Cpu.Kernels;

/// <summary>
/// Scaled dot-product attention (Vaswani et al., "Attention Is All You Need", 2017) for one query row
/// and one head over a paged KV cache, with grouped-query heads (Ainslie et al., "GQA", 2023): head h
/// reads kv head h / (heads / kvHeads).
/// </summary>
/// <remarks>
/// Layout of one (layer, kv head) in a block of BlockSize slots: K four dimensions at a time,
/// [headDim/4][slot][4] (<see cref="KeyIndex"/>), then (after all kv heads' K) V as [slot][headDim].
/// The scores of 4 consecutive slots are then headDim/4 multiply-adds of the query's four elements,
/// broadcast, with a vector of 4 keys × 4 elements, each lane one phase of a slot's dot product — a
/// short fixed sum per slot at the end rather than a horizontal sum per element, and a new key is
/// headDim/4 pieces of 4 elements, not one element in each of headDim cache lines. V stays row-major,
/// so the weighted sum of values keeps a head's output in registers while it walks the slots.
///
/// Batch invariance: a row's result depends only on which slots it sees and in which order, never on
/// where they lie or what else is in the batch. Every score is computed with one fixed arithmetic
/// (<see cref="SlotScore"/>, which the vector kernels reproduce lane by lane), and every output
/// element is one chain of multiply-adds over the visible slots in sequence order. So verifying a draft
/// tree gives each node bit for bit the attention it gets when decoded alone — what lets greedy
/// speculative decoding reproduce plain greedy decoding token for token.
/// </remarks>
public static unsafe class Attention
{
    /// <summary>
    /// Asks for <paramref name="bytes"/> bytes from <paramref name="p"/> to be brought into cache. The
    /// kernels below ask for the next block's keys (or values) a few rows at a time while they compute
    /// on this block's: a block's K or V of one head is 4-8 KiB on its own page, and the hardware
    /// prefetcher stops at page boundaries, so without this every block starts with a wait on memory
    /// (measured, 16 sequences at context 512 on 2 cores: attention 23 → 14.5 ms a step with an F16
    /// cache; F32, bound by bandwidth, unchanged).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Prefetch(byte* p, long bytes)
    {
        if (!Sse.IsSupported)
            return;
        for (long i = 0; i < bytes; i += 64)
            Sse.Prefetch0(p + i);
    }

    /// <summary>
    /// Asks for the keys and values a head's attention reads first — slots [from, run)'s part of their first
    /// block — so that a thread walking a batch's (sequence, head) items fetches the next item's while it
    /// computes this one. Without it every item began with two waits on memory (its first K and V block: 16
    /// sequences of the 110M shape at context 150 read 44 MB of cache a step at ~9 GB/s on 2 cores).
    /// </summary>
    public static void PrefetchFirstBlock(byte*[] blocks, KvElementType element, int* blockTable, KvLayout layout, int layer, int kvHead, int from, int run)
    {
        if (!Sse.IsSupported || run <= from)
            return;
        int hd = layout.HeadDim, bs = layout.BlockSize, bytes = element.Bytes();
        int start = from / bs * bs, first = from - start, end = Math.Min(run - start, bs);
        byte* block = blocks[blockTable[start / bs]];
        // K: per four dimensions, slots first..end side by side ([hd/4][bs][4]); V: rows first..end ([bs][hd])
        byte* k = block + (long)KeyOffset(layout, layer, kvHead) * bytes;
        long keyRun = 4L * (end - first) * bytes;
        for (int d = 0; d < hd / 4; d++)
            Prefetch(k + ((long)d * bs + first) * 4 * bytes, keyRun);
        Prefetch(block + ((long)ValueOffset(layout, layer, kvHead) + (long)first * hd) * bytes, (long)(end - first) * hd * bytes);
    }

    [ThreadStatic]
    private static float[]? s_scores;

    [ThreadStatic]
    private static int[]? s_slots;

    /// <summary>Offset of K of (layer, kvHead) within a block: hd·bs elements (<see cref="KeyIndex"/>).</summary>
    public static int KeyOffset(KvLayout layout, int layer, int kvHead) =>
        (layer * 2 * layout.KvHeads + kvHead) * layout.BlockSize * layout.HeadDim;

    /// <summary>Offset of V of (layer, kvHead) within a block: [bs][hd] elements.</summary>
    public static int ValueOffset(KvLayout layout, int layer, int kvHead) =>
        KeyOffset(layout, layer, kvHead) + layout.KvHeads * layout.BlockSize * layout.HeadDim;

    /// <summary>
    /// Byte offset, in an 8-bit block (<see cref="KvI8"/>), of the scales of (layer, kvHead)'s keys or values:
    /// [layer][K, V][kvHead][slot] floats after every layer's elements.
    /// </summary>
    public static long ScaleOffset(KvLayout layout, int layer, int kvHead, bool values) =>
        2L * layout.Layers * layout.LayerBlockFloats + (((long)layer * 2 + (values ? 1 : 0)) * layout.KvHeads + kvHead) * layout.BlockSize * sizeof(float);

    /// <summary>
    /// An 8-bit cache's scales applied (<see cref="KvI8"/>): x[i] *= the scale of slot from + i for the run
    /// [from, run), then of the listed slots, whose entries follow the run's. Keys' scales go on the scores
    /// before the softmax, values' on the weights after it.
    /// </summary>
    private static void ApplyScales(float* x, byte*[] blocks, int* blockTable, KvLayout layout, int layer, int kvHead, bool values,
        int from, int run, ReadOnlySpan<int> extra)
    {
        long offset = ScaleOffset(layout, layer, kvHead, values);
        int bs = layout.BlockSize;
        for (int start = from / bs * bs; start < run; start += bs)
        {
            var scales = (float*)(blocks[blockTable[start / bs]] + offset);
            int first = Math.Max(from, start), end = Math.Min(run, start + bs);
            var part = new Span<float>(x + first - from, end - first);
            System.Numerics.Tensors.TensorPrimitives.Multiply(part, new ReadOnlySpan<float>(scales + first - start, end - first), part);
        }
        for (int i = 0; i < extra.Length; i++)
        {
            int slot = extra[i];
            x[run - from + i] *= ((float*)(blocks[blockTable[slot / bs]] + offset))[slot % bs];
        }
    }

    /// <summary>
    /// Attention of query row <paramref name="row"/> of a batch of <paramref name="n"/> tokens, stored at
    /// slots prefix.. of a sequence whose blocks are <paramref name="blockTable"/>: the row sees all
    /// <paramref name="prefix"/> committed slots and the batch slots <paramref name="mask"/> allows.
    /// </summary>
    /// <param name="blocks">Start of each block's memory by block id.</param>
    /// <param name="windowStart">
    /// The first slot the row sees (sliding-window attention; 0 without a window). A tree mask must
    /// already exclude the batch slots outside the window.
    /// </param>
    /// <param name="softCap">0, or Gemma 2's soft-capping: each score s becomes cap·tanh(s / cap).</param>
    /// <param name="element">The cache's elements: float, F16 (widened exactly to float as they are read) or 8-bit (<see cref="KvI8"/>).</param>
    public static void Head(float* q, byte*[] blocks, KvElementType element, int* blockTable, KvLayout layout,
        int layer, int kvHead, int prefix, int n, int row, AttentionMask mask, float scale, float* output, int windowStart = 0, float softCap = 0)
    {
        switch (element)
        {
            case KvElementType.F16:
                Head<KvF16>(q, blocks, blockTable, layout, layer, kvHead, prefix, n, row, mask, scale, output, windowStart, softCap);
                break;
            case KvElementType.I8:
                Head<KvI8>(q, blocks, blockTable, layout, layer, kvHead, prefix, n, row, mask, scale, output, windowStart, softCap);
                break;
            default:
                Head<KvF32>(q, blocks, blockTable, layout, layer, kvHead, prefix, n, row, mask, scale, output, windowStart, softCap);
                break;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Head<TKv>(float* q, byte*[] blocks, int* blockTable, KvLayout layout,
        int layer, int kvHead, int prefix, int n, int row, AttentionMask mask, float scale, float* output, int windowStart, float softCap)
        where TKv : struct, IKvElement
    {
        int hd = layout.HeadDim, bs = layout.BlockSize;
        int kBase = KeyOffset(layout, layer, kvHead);
        int vBase = ValueOffset(layout, layer, kvHead);

        // A contiguous run of visible slots [from, run): the whole causal window, or the committed prefix
        // when the mask is a tree; then, for a tree, the batch slots it allows, listed.
        int run = mask.IsCausal ? prefix + row + 1 : prefix;
        int from = Math.Min(windowStart, run);
        int capacity = prefix + n + 32; // group kernels may write scores up to 31 slots past the run
        var scoreArray = ScoreBuffer(ref s_scores, capacity);
        int count = run - from;
        int[]? list = null;
        fixed (float* scores = scoreArray)
        {
            Scores<TKv>(q, blocks, blockTable, kBase, hd, bs, from, run, scale, scores);
            if (!mask.IsCausal)
            {
                list = s_slots is { } l && l.Length >= n ? l : s_slots = new int[Math.Max(n, 256)];
                for (int j = 0; j < n; j++)
                {
                    if (!mask.Allows(row, j))
                        continue;
                    int slot = prefix + j;
                    list[count - (run - from)] = slot;
                    scores[count++] = SlotScore<TKv>(q, TKv.At(blocks[blockTable[slot / bs]], kBase), slot % bs, bs, hd, scale);
                }
            }
            var extra = list is null ? ReadOnlySpan<int>.Empty : new ReadOnlySpan<int>(list, 0, count - (run - from));
            if (typeof(TKv) == typeof(KvI8))
                ApplyScales(scores, blocks, blockTable, layout, layer, kvHead, false, from, run, extra);
            ToWeights(scores, count, softCap);
            if (typeof(TKv) == typeof(KvI8))
                ApplyScales(scores, blocks, blockTable, layout, layer, kvHead, true, from, run, extra);
            WeightedValues<TKv>(scores, blocks, blockTable, vBase, hd, bs, from, run, extra, output);
        }
    }

    /// <summary>This thread's score buffer, grown to hold <paramref name="capacity"/> scores.</summary>
    private static float[] ScoreBuffer(ref float[]? buffer, int capacity) =>
        buffer is { } b && b.Length >= capacity ? b : buffer = new float[Math.Max(capacity, 512)];

    /// <summary>Scores to attention weights: Gemma 2's soft cap (cap·tanh(s / cap)) where one is set, then the softmax.</summary>
    private static void ToWeights(float* scores, int count, float softCap)
    {
        if (softCap > 0)
        {
            for (int i = 0; i < count; i++)
                scores[i] = softCap * MathF.Tanh(scores[i] / softCap);
        }
        Activations.SoftmaxF32(new ReadOnlySpan<float>(scores, count), new Span<float>(scores, count));
    }

    /// <summary>Whether <see cref="HeadPair"/> runs on this machine for heads of <paramref name="headDim"/>.</summary>
    public static bool HasPair(int headDim) => Vector512.IsHardwareAccelerated && headDim % 64 == 0;

    /// <summary>
    /// <see cref="Head"/> for two causal rows of the same head and sequence, rows <paramref name="rowA"/>
    /// &lt; <paramref name="rowB"/> (no tree, no window; see <see cref="HasPair"/>): each key and value
    /// is loaded once for both rows where both see it. Every row keeps its own accumulators and the
    /// single-row order of operations, so each output is bit for bit what <see cref="Head"/> gives it
    /// (tests) — a prompt's attention stays batch-invariant. Measured on a 512-token prefill of the 110M
    /// shape: attention 257 → 147 ms, the prefill 1,372 → 1,557 tok/s (docs/benchmarks.md).
    /// </summary>
    public static void HeadPair(float* qa, float* qb, byte*[] blocks, KvElementType element, int* blockTable, KvLayout layout, int layer, int kvHead,
        int prefix, int rowA, int rowB, float scale, float* outA, float* outB, float softCap = 0)
    {
        switch (element)
        {
            case KvElementType.F16:
                HeadPair<KvF16>(qa, qb, blocks, blockTable, layout, layer, kvHead, prefix, rowA, rowB, scale, outA, outB, softCap);
                break;
            case KvElementType.I8:
                HeadPair<KvI8>(qa, qb, blocks, blockTable, layout, layer, kvHead, prefix, rowA, rowB, scale, outA, outB, softCap);
                break;
            default:
                HeadPair<KvF32>(qa, qb, blocks, blockTable, layout, layer, kvHead, prefix, rowA, rowB, scale, outA, outB, softCap);
                break;
        }
    }

    [ThreadStatic]
    private static float[]? s_scoresB;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void HeadPair<TKv>(float* qa, float* qb, byte*[] blocks, int* blockTable, KvLayout layout, int layer, int kvHead,
        int prefix, int rowA, int rowB, float scale, float* outA, float* outB, float softCap) where TKv : struct, IKvElement
    {
        int hd = layout.HeadDim, bs = layout.BlockSize;
        int kBase = KeyOffset(layout, layer, kvHead), vBase = ValueOffset(layout, layer, kvHead);
        int runA = prefix + rowA + 1, runB = prefix + rowB + 1;
        int capacity = runB + 32; // group kernels may write scores up to 31 slots past the run
        var arrayA = ScoreBuffer(ref s_scores, capacity);
        var arrayB = ScoreBuffer(ref s_scoresB, capacity);
        fixed (float* scoresA = arrayA)
        fixed (float* scoresB = arrayB)
        {
            for (int start = 0; start < runB; start += bs)
            {
                byte* kt = TKv.At(blocks[blockTable[start / bs]], kBase);
                byte* next = start + bs < runB ? TKv.At(blocks[blockTable[start / bs + 1]], kBase) : kt;
                int end = Math.Min(runB, start + bs) - start, g = 0;
                for (; g < end && g + 32 <= bs; g += 32)
                {
                    if (start + g < runA)
                        Scores32Pair<TKv>(qa, qb, kt, g, next, bs, hd, scale, scoresA + start + g, scoresB + start + g);
                    else
                        Scores32<TKv>(qb, kt, g, next, bs, hd, scale, scoresB + start + g);
                }
                for (; g < end; g++)
                {
                    scoresB[start + g] = SlotScore<TKv>(qb, kt, g, bs, hd, scale);
                    if (start + g < runA)
                        scoresA[start + g] = SlotScore<TKv>(qa, kt, g, bs, hd, scale);
                }
            }
            if (typeof(TKv) == typeof(KvI8))
            {
                ApplyScales(scoresA, blocks, blockTable, layout, layer, kvHead, false, 0, runA, default);
                ApplyScales(scoresB, blocks, blockTable, layout, layer, kvHead, false, 0, runB, default);
            }
            ToWeights(scoresA, runA, softCap);
            ToWeights(scoresB, runB, softCap);
            if (typeof(TKv) == typeof(KvI8))
            {
                ApplyScales(scoresA, blocks, blockTable, layout, layer, kvHead, true, 0, runA, default);
                ApplyScales(scoresB, blocks, blockTable, layout, layer, kvHead, true, 0, runB, default);
            }
            for (int c = 0; c < hd; c += 64)
                Values64Pair<TKv>(scoresA, scoresB, blocks, blockTable, vBase + c, hd, bs, runA, runB, outA + c, outB + c);
        }
    }

    /// <summary><see cref="Scores32"/> for two query rows: the keys loaded once, each row's eight accumulators its own.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Scores32Pair<TKv>(float* qa, float* qb, byte* kt, int slot0, byte* next, int bs, int hd, float scale, float* scoresA, float* scoresB)
        where TKv : struct, IKvElement
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        Vector512<float> b0 = default, b1 = default, b2 = default, b3 = default, b4 = default, b5 = default, b6 = default, b7 = default;
        for (int d = 0; d < hd; d += 4)
        {
            long at = ((long)d * bs + 4L * slot0); // group d/4, slot slot0
            byte* k = TKv.At(kt, at);
            Prefetch(TKv.At(next, at), 128L * TKv.Bytes);
            var pa = Avx512F.BroadcastVector128ToVector512(qa + d);
            var pb = Avx512F.BroadcastVector128ToVector512(qb + d);
            var k0 = TKv.Load16(k);
            a0 = Vector512.FusedMultiplyAdd(pa, k0, a0);
            b0 = Vector512.FusedMultiplyAdd(pb, k0, b0);
            k0 = TKv.Load16(TKv.At(k, 16));
            a1 = Vector512.FusedMultiplyAdd(pa, k0, a1);
            b1 = Vector512.FusedMultiplyAdd(pb, k0, b1);
            k0 = TKv.Load16(TKv.At(k, 32));
            a2 = Vector512.FusedMultiplyAdd(pa, k0, a2);
            b2 = Vector512.FusedMultiplyAdd(pb, k0, b2);
            k0 = TKv.Load16(TKv.At(k, 48));
            a3 = Vector512.FusedMultiplyAdd(pa, k0, a3);
            b3 = Vector512.FusedMultiplyAdd(pb, k0, b3);
            k0 = TKv.Load16(TKv.At(k, 64));
            a4 = Vector512.FusedMultiplyAdd(pa, k0, a4);
            b4 = Vector512.FusedMultiplyAdd(pb, k0, b4);
            k0 = TKv.Load16(TKv.At(k, 80));
            a5 = Vector512.FusedMultiplyAdd(pa, k0, a5);
            b5 = Vector512.FusedMultiplyAdd(pb, k0, b5);
            k0 = TKv.Load16(TKv.At(k, 96));
            a6 = Vector512.FusedMultiplyAdd(pa, k0, a6);
            b6 = Vector512.FusedMultiplyAdd(pb, k0, b6);
            k0 = TKv.Load16(TKv.At(k, 112));
            a7 = Vector512.FusedMultiplyAdd(pa, k0, a7);
            b7 = Vector512.FusedMultiplyAdd(pb, k0, b7);
        }
        var s = Vector512.Create(scale);
        (SlotSums(a0, a1, a2, a3) * s).Store(scoresA);
        (SlotSums(a4, a5, a6, a7) * s).Store(scoresA + 16);
        (SlotSums(b0, b1, b2, b3) * s).Store(scoresB);
        (SlotSums(b4, b5, b6, b7) * s).Store(scoresB + 16);
    }

    /// <summary>
    /// <see cref="Values64"/> for two causal rows: the values both rows see, [0, runA), loaded once for
    /// both; then row B alone over [runA, runB). Each row's chain of multiply-adds is in slot order.
    /// </summary>
    private static void Values64Pair<TKv>(float* pa, float* pb, byte*[] blocks, int* blockTable, int vBase, int hd, int bs, int runA, int runB,
        float* outA, float* outB) where TKv : struct, IKvElement
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
        for (int start = 0; start < runB; start += bs)
        {
            byte* v = TKv.At(blocks[blockTable[start / bs]], vBase);
            byte* next = start + bs < runB ? TKv.At(blocks[blockTable[start / bs + 1]], vBase) : v;
            int both = Math.Clamp(runA - start, 0, bs), end = Math.Min(runB, start + bs) - start, t = 0;
            for (; t < both; t++)
            {
                byte* vt = TKv.At(v, (long)t * hd);
                Prefetch(TKv.At(next, (long)t * hd), (long)hd * TKv.Bytes);
                var v0 = TKv.Load16(vt);
                var v1 = TKv.Load16(TKv.At(vt, 16));
                var v2 = TKv.Load16(TKv.At(vt, 32));
                var v3 = TKv.Load16(TKv.At(vt, 48));
                var pt = Vector512.Create(pa[start + t]);
                a0 = Vector512.FusedMultiplyAdd(pt, v0, a0);
                a1 = Vector512.FusedMultiplyAdd(pt, v1, a1);
                a2 = Vector512.FusedMultiplyAdd(pt, v2, a2);
                a3 = Vector512.FusedMultiplyAdd(pt, v3, a3);
                pt = Vector512.Create(pb[start + t]);
                b0 = Vector512.FusedMultiplyAdd(pt, v0, b0);
                b1 = Vector512.FusedMultiplyAdd(pt, v1, b1);
                b2 = Vector512.FusedMultiplyAdd(pt, v2, b2);
                b3 = Vector512.FusedMultiplyAdd(pt, v3, b3);
            }
            for (; t < end; t++)
            {
                byte* vt = TKv.At(v, (long)t * hd);
                Prefetch(TKv.At(next, (long)t * hd), (long)hd * TKv.Bytes);
                var pt = Vector512.Create(pb[start + t]);
                b0 = Vector512.FusedMultiplyAdd(pt, TKv.Load16(vt), b0);
                b1 = Vector512.FusedMultiplyAdd(pt, TKv.Load16(TKv.At(vt, 16)), b1);
                b2 = Vector512.FusedMultiplyAdd(pt, TKv.Load16(TKv.At(vt, 32)), b2);
                b3 = Vector512.FusedMultiplyAdd(pt, TKv.Load16(TKv.At(vt, 48)), b3);
            }
        }
        a0.Store(outA);
        a1.Store(outA + 16);
        a2.Store(outA + 32);
        a3.Store(outA + 48);
        b0.Store(outB);
        b1.Store(outB + 16);
        b2.Store(outB + 32);
        b3.Store(outB + 48);
    }

    /// <summary>How many interleaved accumulators the score kernels of this machine use (4 with vectors, 1 scalar).</summary>
    private static readonly int ScorePhases = Vector256.IsHardwareAccelerated ? 4 : 1;

    /// <summary>
    /// Where element d of slot <paramref name="slot"/>'s key lies in a K block ([hd/4][bs][4]: dimensions
    /// four at a time, each slot's four side by side; the hd mod 4 last ones transposed, [d][bs]). A slot's
    /// key is then 16-byte pieces a line apart rather than one element in each of hd lines: a decoding
    /// step writes one new key per head, and with hd lines to read and write back per key the cache write
    /// cost a 16-sequence step of the 110M shape ~1 ms (docs/benchmarks.md). The score kernels still need
    /// no horizontal sum per dimension: four slots' four dimensions fill a 512-bit vector, and the four
    /// lanes of a slot are the four phases of the dot product.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static long KeyIndex(int d, int slot, int bs, int hd)
    {
        int whole = hd & ~3;
        return d < whole ? ((long)(d >> 2) * bs + slot) * 4 + (d & 3) : (long)whole * bs + (long)(d - whole) * bs + slot;
    }

    /// <summary>
    /// The score of one slot of a K block (<see cref="KeyIndex"/>), computed exactly as one slot of
    /// <see cref="Scores32"/> (or <see cref="Scores32x256"/>) computes it: element d goes into accumulator
    /// d mod P (P = <see cref="ScorePhases"/>) by fused multiply-add, the tail of hd mod P elements into the
    /// first, and the accumulators are added as the vector code adds them.
    /// </summary>
    private static float SlotScore<TKv>(float* q, byte* kt, int slot, int bs, int hd, float scale) where TKv : struct, IKvElement
    {
        if (ScorePhases == 4)
        {
            float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
            int d = 0;
            for (; d + 4 <= hd; d += 4)
            {
                byte* k = TKv.At(kt, KeyIndex(d, slot, bs, hd));
                a0 = MathF.FusedMultiplyAdd(q[d], TKv.Load(k), a0);
                a1 = MathF.FusedMultiplyAdd(q[d + 1], TKv.Load(TKv.At(k, 1)), a1);
                a2 = MathF.FusedMultiplyAdd(q[d + 2], TKv.Load(TKv.At(k, 2)), a2);
                a3 = MathF.FusedMultiplyAdd(q[d + 3], TKv.Load(TKv.At(k, 3)), a3);
            }
            for (; d < hd; d++)
                a0 = MathF.FusedMultiplyAdd(q[d], TKv.Load(TKv.At(kt, KeyIndex(d, slot, bs, hd))), a0);
            return (a0 + a1 + (a2 + a3)) * scale;
        }
        float sum = 0;
        for (int d = 0; d < hd; d++)
            sum = MathF.FusedMultiplyAdd(q[d], TKv.Load(TKv.At(kt, KeyIndex(d, slot, bs, hd))), sum);
        return sum * scale;
    }

    /// <summary>scores[t - from] = scale · q·k_t for t in [from, run); may also write scores up to the end of the last group of 32.</summary>
    private static void Scores<TKv>(float* q, byte*[] blocks, int* blockTable, int kBase, int hd, int bs, int from, int run, float scale, float* scores)
        where TKv : struct, IKvElement
    {
        scores -= from;
        for (int start = from / bs * bs; start < run; start += bs)
        {
            byte* kt = TKv.At(blocks[blockTable[start / bs]], kBase);
            // the block after next, brought in while this block's keys are computed on (the next one was
            // fetched during the previous block, or before the loop; past the end: this block, cached)
            if (start == from / bs * bs && start + bs < run)
                Prefetch(TKv.At(blocks[blockTable[start / bs + 1]], kBase), (long)hd * bs * TKv.Bytes);
            byte* next = start + 2 * bs < run ? TKv.At(blocks[blockTable[start / bs + 2]], kBase) : kt;
            int end = Math.Min(run, start + bs) - start; // slots of this block that are needed
            int g = Math.Max(0, from - start);
            // whole groups of 32 inside the block, even if the run ends inside the group
            if (Vector512.IsHardwareAccelerated && hd % 4 == 0)
            {
                for (; g < end && g + 32 <= bs; g += 32)
                    Scores32<TKv>(q, kt, g, next, bs, hd, scale, scores + start + g);
            }
            else if (Vector256.IsHardwareAccelerated && hd % 4 == 0)
            {
                for (; g < end && g + 32 <= bs; g += 32)
                    Scores32x256<TKv>(q, kt, g, bs, hd, scale, scores + start + g);
            }
            for (; g < end; g++)
                scores[start + g] = SlotScore<TKv>(q, kt, g, bs, hd, scale);
        }
    }

    /// <summary>
    /// The scores of 32 consecutive slots of a K block from <paramref name="slot0"/> (hd a multiple of 4):
    /// per four dimensions, eight vectors of four slots × four dimensions against the query's four
    /// broadcast, each lane one phase of its slot's dot product; the phases added at the end as
    /// <see cref="SlotScore"/> adds them.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Scores32<TKv>(float* q, byte* kt, int slot0, byte* next, int bs, int hd, float scale, float* scores) where TKv : struct, IKvElement
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        for (int d = 0; d < hd; d += 4)
        {
            long at = (long)d * bs + 4L * slot0; // group d/4, slot slot0
            byte* k = TKv.At(kt, at);
            Prefetch(TKv.At(next, at), 128L * TKv.Bytes); // the next block's same 32 slots of these four dimensions
            var p = Avx512F.BroadcastVector128ToVector512(q + d);
            a0 = Vector512.FusedMultiplyAdd(p, TKv.Load16(k), a0);
            a1 = Vector512.FusedMultiplyAdd(p, TKv.Load16(TKv.At(k, 16)), a1);
            a2 = Vector512.FusedMultiplyAdd(p, TKv.Load16(TKv.At(k, 32)), a2);
            a3 = Vector512.FusedMultiplyAdd(p, TKv.Load16(TKv.At(k, 48)), a3);
            a4 = Vector512.FusedMultiplyAdd(p, TKv.Load16(TKv.At(k, 64)), a4);
            a5 = Vector512.FusedMultiplyAdd(p, TKv.Load16(TKv.At(k, 80)), a5);
            a6 = Vector512.FusedMultiplyAdd(p, TKv.Load16(TKv.At(k, 96)), a6);
            a7 = Vector512.FusedMultiplyAdd(p, TKv.Load16(TKv.At(k, 112)), a7);
        }
        var s = Vector512.Create(scale);
        (SlotSums(a0, a1, a2, a3) * s).Store(scores);
        (SlotSums(a4, a5, a6, a7) * s).Store(scores + 16);
    }

    private static readonly Vector512<int> EveryFourth = Vector512.Create(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
    private static readonly Vector512<int> LowHalves = Vector512.Create(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);

    /// <summary>
    /// Sixteen slots' scores from four vectors of four slots' four phases: (a0 + a1) + (a2 + a3) per slot,
    /// as <see cref="SlotScore"/> adds them (a float sum does not depend on the order of its two terms).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> SlotSums(Vector512<float> u0, Vector512<float> u1, Vector512<float> u2, Vector512<float> u3)
    {
        u0 = PhaseSums(u0);
        u1 = PhaseSums(u1);
        u2 = PhaseSums(u2);
        u3 = PhaseSums(u3);
        var x = Avx512F.PermuteVar16x32x2(u0, EveryFourth, u1); // slots 0-7 in lanes 0-7
        var y = Avx512F.PermuteVar16x32x2(u2, EveryFourth, u3); // slots 8-15
        return Avx512F.PermuteVar16x32x2(x, LowHalves, y);
    }

    /// <summary>Lane 4i: (a0 + a1) + (a2 + a3) of the four lanes 4i..4i+3.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> PhaseSums(Vector512<float> u)
    {
        var t = u + Avx512F.Permute4x32(u, 0b10_11_00_01); // lanes 4i and 4i+2: a0 + a1, a2 + a3
        return t + Avx512F.Permute4x32(t, 0b01_00_11_10);
    }

    /// <summary><see cref="Scores32"/> with 256-bit vectors: per eight slots, four vectors of two slots × four dimensions.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Scores32x256<TKv>(float* q, byte* kt, int slot0, int bs, int hd, float scale, float* scores) where TKv : struct, IKvElement
    {
        for (int e = 0; e < 32; e += 8)
        {
            Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
            for (int d = 0; d < hd; d += 4)
            {
                byte* k = TKv.At(kt, (long)d * bs + 4L * (slot0 + e));
                var p = Avx.BroadcastVector128ToVector256(q + d);
                a0 = Vector256.FusedMultiplyAdd(p, TKv.Load8(k), a0);
                a1 = Vector256.FusedMultiplyAdd(p, TKv.Load8(TKv.At(k, 8)), a1);
                a2 = Vector256.FusedMultiplyAdd(p, TKv.Load8(TKv.At(k, 16)), a2);
                a3 = Vector256.FusedMultiplyAdd(p, TKv.Load8(TKv.At(k, 24)), a3);
            }
            Store2(a0, scores + e);
            Store2(a1, scores + e + 2);
            Store2(a2, scores + e + 4);
            Store2(a3, scores + e + 6);
        }

        void Store2(Vector256<float> u, float* dst)
        {
            var t = u + Avx.Permute(u, 0b10_11_00_01);
            t += Avx.Permute(t, 0b01_00_11_10);
            dst[0] = t.GetElement(0) * scale;
            dst[1] = t.GetElement(4) * scale;
        }
    }

    /// <summary>
    /// output = Σ p[t]·v_t over the run [0, run) and then the listed extra slots (whose weights follow the
    /// run's in <paramref name="p"/>): each output element is one chain of fused multiply-adds in that
    /// order, whatever the vector width, so the result is the same as if the extra slots were part of
    /// the run. Output elements are kept in registers 64 (or 16) at a time.
    /// </summary>
    private static void WeightedValues<TKv>(float* p, byte*[] blocks, int* blockTable, int vBase, int hd, int bs, int from, int run,
        ReadOnlySpan<int> extra, float* output) where TKv : struct, IKvElement
    {
        int c = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            for (; c + 64 <= hd; c += 64)
                Values64<TKv>(p, blocks, blockTable, vBase + c, hd, bs, from, run, extra, output + c);
            for (; c + 16 <= hd; c += 16)
                Values16<TKv>(p, blocks, blockTable, vBase + c, hd, bs, from, run, extra, output + c);
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            for (; c + 8 <= hd; c += 8)
                Values8<TKv>(p, blocks, blockTable, vBase + c, hd, bs, from, run, extra, output + c);
        }
        for (; c < hd; c++)
        {
            float acc = 0;
            for (int t = from; t < run; t++)
                acc = MathF.FusedMultiplyAdd(p[t - from], TKv.Load(TKv.At(blocks[blockTable[t / bs]], vBase + t % bs * hd + c)), acc);
            for (int i = 0; i < extra.Length; i++)
            {
                int slot = extra[i];
                acc = MathF.FusedMultiplyAdd(p[run - from + i], TKv.Load(TKv.At(blocks[blockTable[slot / bs]], vBase + slot % bs * hd + c)), acc);
            }
            output[c] = acc;
        }
    }

    private static void Values64<TKv>(float* p, byte*[] blocks, int* blockTable, int vBase, int hd, int bs, int from, int run, ReadOnlySpan<int> extra, float* output)
        where TKv : struct, IKvElement
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
        for (int start = from / bs * bs; start < run; start += bs)
        {
            byte* v = TKv.At(blocks[blockTable[start / bs]], vBase);
            if (start == from / bs * bs && start + bs < run)
                Prefetch(TKv.At(blocks[blockTable[start / bs + 1]], vBase), (long)hd * bs * TKv.Bytes);
            byte* next = start + 2 * bs < run ? TKv.At(blocks[blockTable[start / bs + 2]], vBase) : v;
            int end = Math.Min(run, start + bs) - start;
            for (int t = Math.Max(0, from - start); t < end; t++)
            {
                var pt = Vector512.Create(p[start + t - from]);
                byte* vt = TKv.At(v, (long)t * hd);
                Prefetch(TKv.At(next, (long)t * hd), (long)hd * TKv.Bytes); // the same row of the next block
                a0 = Vector512.FusedMultiplyAdd(pt, TKv.Load16(vt), a0);
                a1 = Vector512.FusedMultiplyAdd(pt, TKv.Load16(TKv.At(vt, 16)), a1);
                a2 = Vector512.FusedMultiplyAdd(pt, TKv.Load16(TKv.At(vt, 32)), a2);
                a3 = Vector512.FusedMultiplyAdd(pt, TKv.Load16(TKv.At(vt, 48)), a3);
            }
        }
        for (int i = 0; i < extra.Length; i++)
        {
            int slot = extra[i];
            var pt = Vector512.Create(p[run - from + i]);
            byte* vt = TKv.At(blocks[blockTable[slot / bs]], vBase + (long)(slot % bs) * hd);
            a0 = Vector512.FusedMultiplyAdd(pt, TKv.Load16(vt), a0);
            a1 = Vector512.FusedMultiplyAdd(pt, TKv.Load16(TKv.At(vt, 16)), a1);
            a2 = Vector512.FusedMultiplyAdd(pt, TKv.Load16(TKv.At(vt, 32)), a2);
            a3 = Vector512.FusedMultiplyAdd(pt, TKv.Load16(TKv.At(vt, 48)), a3);
        }
        a0.Store(output);
        a1.Store(output + 16);
        a2.Store(output + 32);
        a3.Store(output + 48);
    }

    private static void Values16<TKv>(float* p, byte*[] blocks, int* blockTable, int vBase, int hd, int bs, int from, int run, ReadOnlySpan<int> extra, float* output)
        where TKv : struct, IKvElement
    {
        Vector512<float> a = default;
        for (int start = from / bs * bs; start < run; start += bs)
        {
            byte* v = TKv.At(blocks[blockTable[start / bs]], vBase);
            int end = Math.Min(run, start + bs) - start;
            for (int t = Math.Max(0, from - start); t < end; t++)
                a = Vector512.FusedMultiplyAdd(Vector512.Create(p[start + t - from]), TKv.Load16(TKv.At(v, (long)t * hd)), a);
        }
        for (int i = 0; i < extra.Length; i++)
        {
            int slot = extra[i];
            a = Vector512.FusedMultiplyAdd(Vector512.Create(p[run - from + i]), TKv.Load16(TKv.At(blocks[blockTable[slot / bs]], vBase + (long)(slot % bs) * hd)), a);
        }
        a.Store(output);
    }

    private static void Values8<TKv>(float* p, byte*[] blocks, int* blockTable, int vBase, int hd, int bs, int from, int run, ReadOnlySpan<int> extra, float* output)
        where TKv : struct, IKvElement
    {
        Vector256<float> a = default;
        for (int start = from / bs * bs; start < run; start += bs)
        {
            byte* v = TKv.At(blocks[blockTable[start / bs]], vBase);
            int end = Math.Min(run, start + bs) - start;
            for (int t = Math.Max(0, from - start); t < end; t++)
                a = Vector256.FusedMultiplyAdd(Vector256.Create(p[start + t - from]), TKv.Load8(TKv.At(v, (long)t * hd)), a);
        }
        for (int i = 0; i < extra.Length; i++)
        {
            int slot = extra[i];
            a = Vector256.FusedMultiplyAdd(Vector256.Create(p[run - from + i]), TKv.Load8(TKv.At(blocks[blockTable[slot / bs]], vBase + (long)(slot % bs) * hd)), a);
        }
        a.Store(output);
    }
}
