using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Engine.Backends.Cpu.Kernels;

/// <summary>
/// Scaled dot-product attention (Vaswani et al., "Attention Is All You Need", 2017) for one query row
/// and one head over a paged KV cache, with grouped-query heads (Ainslie et al., "GQA", 2023): head h
/// reads kv head h / (heads / kvHeads). Keys and values of one kv head lie contiguously within a block
/// ([slot][headDim]), so the loops walk the cache block by block.
/// </summary>
public static unsafe class Attention
{
    [ThreadStatic]
    private static float[]? s_scores;

    [ThreadStatic]
    private static int[]? s_slots;

    /// <summary>
    /// Attention of query row <paramref name="row"/> of a batch of <paramref name="n"/> tokens, stored at
    /// slots prefix.. of a sequence whose blocks are <paramref name="blockTable"/>: the row sees all
    /// <paramref name="prefix"/> committed slots and the batch slots <paramref name="mask"/> allows.
    /// </summary>
    /// <param name="blocks">Start of each block's memory by block id; a block is [layer][K,V][kvHead][slot][headDim].</param>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Head(float* q, float*[] blocks, int* blockTable, KvLayout layout,
        int layer, int kvHead, int prefix, int n, int row, AttentionMask mask, float scale, float* output)
    {
        int hd = layout.HeadDim, bs = layout.BlockSize;
        int kBase = (layer * 2 * layout.KvHeads + kvHead) * bs * hd;
        int vBase = kBase + layout.KvHeads * bs * hd;

        // The slots this row sees: a contiguous run for a causal batch, a list for other masks.
        int count;
        int[]? list = null;
        if (mask.IsCausal)
            count = prefix + row + 1;
        else
        {
            list = s_slots is { } l && l.Length >= prefix + n ? l : s_slots = new int[Math.Max(prefix + n, 256)];
            count = 0;
            for (int s = 0; s < prefix; s++)
                list[count++] = s;
            for (int j = 0; j < n; j++)
            {
                if (mask.Allows(row, j))
                    list[count++] = prefix + j;
            }
        }
        var scoreArray = s_scores is { } sc && sc.Length >= count ? sc : s_scores = new float[Math.Max(count, 256)];

        fixed (float* scores = scoreArray)
        {
            if (list is null)
            {
                for (int start = 0; start < count; start += bs)
                {
                    float* k = blocks[blockTable[start / bs]] + kBase;
                    int end = Math.Min(count, start + bs);
                    for (int t = start; t < end; t++)
                        scores[t] = Dot(q, k + (t - start) * hd, hd) * scale;
                }
            }
            else
            {
                for (int t = 0; t < count; t++)
                {
                    int slot = list[t];
                    scores[t] = Dot(q, blocks[blockTable[slot / bs]] + kBase + slot % bs * hd, hd) * scale;
                }
            }
            Activations.SoftmaxF32(new ReadOnlySpan<float>(scores, count), new Span<float>(scores, count));
            new Span<float>(output, hd).Clear();
            if (list is null)
            {
                for (int start = 0; start < count; start += bs)
                {
                    float* v = blocks[blockTable[start / bs]] + vBase;
                    int end = Math.Min(count, start + bs);
                    for (int t = start; t < end; t++)
                        Axpy(scores[t], v + (t - start) * hd, output, hd);
                }
            }
            else
            {
                for (int t = 0; t < count; t++)
                {
                    int slot = list[t];
                    Axpy(scores[t], blocks[blockTable[slot / bs]] + vBase + slot % bs * hd, output, hd);
                }
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Dot(float* a, float* b, int n)
    {
        if (Vector256.IsHardwareAccelerated && n % 16 == 0)
        {
            var acc0 = Vector256<float>.Zero;
            var acc1 = Vector256<float>.Zero;
            for (int i = 0; i < n; i += 16)
            {
                acc0 = Vector256.FusedMultiplyAdd(Vector256.Load(a + i), Vector256.Load(b + i), acc0);
                acc1 = Vector256.FusedMultiplyAdd(Vector256.Load(a + i + 8), Vector256.Load(b + i + 8), acc1);
            }
            return Vector256.Sum(acc0 + acc1);
        }
        return TensorPrimitives.Dot(new ReadOnlySpan<float>(a, n), new ReadOnlySpan<float>(b, n));
    }

    /// <summary>y += a·x.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Axpy(float a, float* x, float* y, int n)
    {
        if (Vector256.IsHardwareAccelerated && n % 8 == 0)
        {
            var av = Vector256.Create(a);
            for (int i = 0; i < n; i += 8)
                Vector256.FusedMultiplyAdd(av, Vector256.Load(x + i), Vector256.Load(y + i)).Store(y + i);
            return;
        }
        TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(x, n), a, new ReadOnlySpan<float>(y, n), new Span<float>(y, n));
    }
}
