namespace Engine.Backends;

/// <summary>
/// Which tokens of a batch each token of the same batch may attend to. Every token always sees the
/// whole committed prefix in the KV cache; the mask only rules among the batch. Plain decoding and
/// prefill use <see cref="Causal"/>; speculative verification passes a tree mask
/// (<see cref="FromParents(ReadOnlySpan{int})"/>: each draft node sees only its ancestors and itself), as in SpecInfer
/// (Miao et al., "SpecInfer: Accelerating Generative LLM Serving with Tree-based Speculative Inference
/// and Verification", 2023).
/// </summary>
public sealed class AttentionMask
{
    private ulong[]? _bits;
    private int _words;

    private AttentionMask(int size, ulong[]? bits)
    {
        Size = size;
        _bits = bits;
        _words = (size + 63) / 64;
    }

    /// <summary>Row i sees batch tokens 0..i. Valid for any batch size.</summary>
    public static AttentionMask Causal { get; } = new(-1, null);

    public bool IsCausal => _bits is null;

    /// <summary>Batch size of an explicit mask (-1 for <see cref="Causal"/>).</summary>
    public int Size { get; private set; }

    public bool Allows(int row, int col) =>
        _bits is null ? col <= row : (_bits[row * _words + (col >> 6)] & (1UL << (col & 63))) != 0;

    /// <summary>
    /// A token tree: <paramref name="parents"/>[i] is the batch index of node i's parent, or -1 for a
    /// node that hangs directly off the committed prefix. Parents must come before their children.
    /// Node i sees itself and its ancestors.
    /// </summary>
    public static AttentionMask FromParents(ReadOnlySpan<int> parents) => FromParents(parents, null);

    /// <summary>
    /// <see cref="FromParents(ReadOnlySpan{int})"/> that rebuilds <paramref name="reuse"/> (a mask this
    /// method made before) in place when it is large enough, so a decoding loop allocates nothing.
    /// </summary>
    public static AttentionMask FromParents(ReadOnlySpan<int> parents, AttentionMask? reuse)
    {
        int n = parents.Length;
        int words = (n + 63) / 64;
        AttentionMask mask;
        if (reuse is { _bits: { } bits } && bits.Length >= n * words) // never Causal, which has no bits
        {
            mask = reuse;
            mask.Size = n;
            mask._words = words;
            Array.Clear(bits, 0, n * words);
        }
        else
            mask = new AttentionMask(n, new ulong[n * words]);
        for (int i = 0; i < n; i++)
        {
            int p = parents[i];
            if (p < -1 || p >= i)
                throw new ArgumentException($"node {i} has parent {p}; a parent must be -1 or an earlier node");
            if (p >= 0)
                Array.Copy(mask._bits!, p * mask._words, mask._bits!, i * mask._words, mask._words);
            mask.Set(i, i);
        }
        return mask;
    }

    /// <summary>An arbitrary mask: <paramref name="allowed"/>[i, j] says whether row i sees batch token j.</summary>
    public static AttentionMask FromMatrix(bool[,] allowed)
    {
        int n = allowed.GetLength(0);
        if (allowed.GetLength(1) != n)
            throw new ArgumentException($"an attention mask must be square, got {n} x {allowed.GetLength(1)}");
        var mask = new AttentionMask(n, new ulong[n * ((n + 63) / 64)]);
        for (int i = 0; i < n; i++)
        {
            for (int j = 0; j < n; j++)
            {
                if (allowed[i, j])
                    mask.Set(i, j);
            }
        }
        return mask;
    }

    /// <summary>
    /// This mask with the pairs whose positions lie <paramref name="window"/> or more apart removed
    /// (row i keeps batch token j only if positions[i] − positions[j] &lt; window): what a sliding-window
    /// layer applies to a tree. Rebuilds <paramref name="reuse"/> in place when it is large enough.
    /// </summary>
    public AttentionMask Windowed(ReadOnlySpan<int> positions, int window, AttentionMask? reuse)
    {
        if (_bits is null)
            throw new InvalidOperationException("the causal mask has no bits to window; the window start of each row covers it");
        if (positions.Length != Size)
            throw new ArgumentException($"{positions.Length} positions for a mask of {Size} tokens", nameof(positions));
        ArgumentOutOfRangeException.ThrowIfLessThan(window, 1);
        int n = Size;
        var mask = reuse is { _bits: { } bits } && bits.Length >= n * _words ? reuse : new AttentionMask(n, new ulong[n * _words]);
        mask.Size = n;
        mask._words = _words;
        Array.Copy(_bits, mask._bits!, n * _words);
        for (int i = 0; i < n; i++)
        {
            for (int j = 0; j < n; j++)
            {
                if (positions[i] - positions[j] >= window)
                    mask._bits![i * _words + (j >> 6)] &= ~(1UL << (j & 63));
            }
        }
        return mask;
    }

    /// <summary>The packed rows (64 columns per word) for backends that upload the mask.</summary>
    public ReadOnlySpan<ulong> Bits => _bits;

    public int WordsPerRow => _words;

    private void Set(int row, int col) => _bits![row * _words + (col >> 6)] |= 1UL << (col & 63);
}
