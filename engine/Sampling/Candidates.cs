namespace Engine.Sampling;

/// <summary>
/// The candidate tokens a sampler chain works on (llama.cpp's <c>llama_token_data_array</c>): ids with
/// their logits and, once computed, probabilities. Processors shrink, reorder and reweight it; the
/// buffers are allocated once per vocabulary size and reused for every token.
/// </summary>
public sealed class Candidates
{
    public Candidates(int vocabSize)
    {
        Ids = new int[vocabSize];
        Logits = new float[vocabSize];
        Probs = new float[vocabSize];
    }

    public int[] Ids { get; }
    public float[] Logits { get; }
    /// <summary>Valid when <see cref="HasProbs"/>; sums to 1 over the first <see cref="Count"/> entries.</summary>
    public float[] Probs { get; }
    public int Count { get; set; }
    /// <summary>True when entries are ordered by descending logit.</summary>
    public bool Sorted { get; set; }
    public bool HasProbs { get; set; }

    /// <summary>Fills the candidates with every token of <paramref name="logits"/>.</summary>
    public void Reset(ReadOnlySpan<float> logits)
    {
        if (logits.Length != Ids.Length)
            throw new ArgumentException($"expected {Ids.Length} logits, got {logits.Length}");
        for (int i = 0; i < logits.Length; i++)
            Ids[i] = i;
        logits.CopyTo(Logits);
        Count = logits.Length;
        Sorted = false;
        HasProbs = false;
    }

    /// <summary>Orders by descending logit (ties by ascending id, so results are deterministic).</summary>
    public void Sort()
    {
        if (Sorted)
            return;
        // Sort ascending on negated logits; Array.Sort is unstable, so break ties explicitly with the id.
        var keys = Logits.AsSpan(0, Count);
        var ids = Ids.AsSpan(0, Count);
        for (int i = 0; i < keys.Length; i++)
            keys[i] = -keys[i];
        keys.Sort(ids);
        for (int i = 0; i < keys.Length; i++)
            keys[i] = -keys[i];
        // Equal logits: order their ids ascending.
        for (int i = 0, j; i < keys.Length; i = j)
        {
            for (j = i + 1; j < keys.Length && keys[j] == keys[i]; j++) { }
            if (j - i > 1)
                ids[i..j].Sort();
        }
        Sorted = true;
        HasProbs = false;
    }

    /// <summary>Softmax over the current candidates (max subtracted first for stability).</summary>
    public void Softmax()
    {
        Backends.Cpu.Kernels.Activations.SoftmaxF32(Logits.AsSpan(0, Count), Probs.AsSpan(0, Count));
        HasProbs = true;
    }
}
