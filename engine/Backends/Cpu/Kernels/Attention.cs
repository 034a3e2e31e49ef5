using System.Numerics.Tensors;

namespace Engine.Backends.Cpu.Kernels;

/// <summary>
/// Scaled dot-product attention (Vaswani et al., "Attention Is All You Need", 2017) for one query row
/// and one head over a paged KV cache, with grouped-query heads (Ainslie et al., "GQA", 2023): head h
/// reads kv head h / (heads / kvHeads).
/// </summary>
public static class Attention
{
    [ThreadStatic]
    private static float[]? s_scores;

    /// <param name="q">The head's query, headDim values.</param>
    /// <param name="blocks">K/V storage by block id: [layer][K,V][kvHead][slot][headDim].</param>
    /// <param name="visible">Slot indices this query sees, in order.</param>
    /// <param name="output">headDim values.</param>
    public static void Head(ReadOnlySpan<float> q, IReadOnlyList<float[]> blocks, ReadOnlySpan<int> blockTable, KvLayout layout,
        int layer, int kvHead, ReadOnlySpan<int> visible, float scale, Span<float> output)
    {
        int hd = layout.HeadDim, bs = layout.BlockSize;
        int kBase = (layer * 2 * layout.KvHeads + kvHead) * bs * hd;
        int vBase = kBase + layout.KvHeads * bs * hd;
        var scores = s_scores is { } s && s.Length >= visible.Length ? s : s_scores = new float[Math.Max(visible.Length, 256)];

        var weights = scores.AsSpan(0, visible.Length);
        for (int t = 0; t < visible.Length; t++)
        {
            int slot = visible[t];
            var block = blocks[blockTable[slot / bs]];
            weights[t] = TensorPrimitives.Dot(q, block.AsSpan(kBase + slot % bs * hd, hd)) * scale;
        }
        Activations.SoftmaxF32(weights, weights);
        output.Clear();
        for (int t = 0; t < visible.Length; t++)
        {
            int slot = visible[t];
            var block = blocks[blockTable[slot / bs]];
            TensorPrimitives.MultiplyAdd(block.AsSpan(vBase + slot % bs * hd, hd), weights[t], output, output);
        }
    }
}
