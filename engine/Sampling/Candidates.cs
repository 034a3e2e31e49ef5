using System.Runtime.Intrinsics;

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
        if (_identity.Length != Ids.Length)
        {
            _identity = new int[Ids.Length];
            for (int i = 0; i < _identity.Length; i++)
                _identity[i] = i;
        }
        _identity.CopyTo(Ids, 0); // a block copy, not a loop per token
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

    /// <summary>
    /// Keeps the <paramref name="k"/> candidates a full <see cref="Sort"/> would put first (descending
    /// logit, ties by ascending id), in that order, without sorting the rest: one pass with a k-entry
    /// min-heap, O(n log k), then a sort of the k kept (llama.cpp's partial sort for top-k). At vocab 32k and
    /// k = 40 this is tens of microseconds where the full sort took milliseconds.
    /// </summary>
    public void KeepTop(int k)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(k, 1);
        if (k >= Count || Sorted)
        {
            Sort();
            Count = Math.Min(k, Count);
            HasProbs = false;
            return;
        }
        if (_heap.Length < k)
        {
            _heap = new int[k];
            _keptIds = new int[k];
            _keptLogits = new float[k];
        }
        var heap = _heap.AsSpan(0, k);
        var logits = Logits.AsSpan(0, Count);
        int size = 0, i = 0;
        // the first k candidates fill the heap (sift up: the root is the worst kept candidate)
        for (; i < k; i++)
        {
            int j = size++;
            while (j > 0 && Better(heap[(j - 1) / 2], i))
            {
                heap[j] = heap[(j - 1) / 2];
                j = (j - 1) / 2;
            }
            heap[j] = i;
        }
        // The rest: almost every candidate is below the root's logit, so eight at a time are compared with
        // it and skipped together; one at or above it is offered to the heap (replace the root, sift down).
        float worst = logits[heap[0]];
        while (i < logits.Length)
        {
            if (Vector256.IsHardwareAccelerated && i + 8 <= logits.Length
                && Vector256.GreaterThanOrEqual(Vector256.Create<float>(logits.Slice(i, 8)), Vector256.Create(worst)).ExtractMostSignificantBits() == 0)
            {
                i += 8;
                continue;
            }
            int end = Math.Min(i + 8, logits.Length);
            for (; i < end; i++)
            {
                if (logits[i] < worst || !Better(i, heap[0]))
                    continue;
                int j = 0;
                while (true)
                {
                    int child = 2 * j + 1;
                    if (child >= k)
                        break;
                    if (child + 1 < k && Better(heap[child], heap[child + 1]))
                        child++;
                    if (!Better(i, heap[child]))
                        break;
                    heap[j] = heap[child];
                    j = child;
                }
                heap[j] = i;
                worst = logits[heap[0]];
            }
        }
        for (int j = 0; j < size; j++)
            (_keptIds[j], _keptLogits[j]) = (Ids[heap[j]], Logits[heap[j]]);
        _keptIds.AsSpan(0, size).CopyTo(Ids);
        _keptLogits.AsSpan(0, size).CopyTo(Logits);
        Count = size;
        Sorted = false;
        Sort();
    }

    /// <summary>Candidate a comes before b in <see cref="Sort"/>'s order (NaN after everything).</summary>
    private bool Better(int a, int b)
    {
        float la = Logits[a], lb = Logits[b];
        return la > lb || (la == lb && Ids[a] < Ids[b]) || (float.IsNaN(lb) && !float.IsNaN(la));
    }

    private int[] _heap = [], _keptIds = [], _identity = [];
    private float[] _keptLogits = [];

    /// <summary>Softmax over the current candidates (max subtracted first for stability).</summary>
    public void Softmax()
    {
        Backends.Cpu.Kernels.Activations.SoftmaxF32(Logits.AsSpan(0, Count), Probs.AsSpan(0, Count));
        HasProbs = true;
    }
}
