namespace Engine.Backends;

/// <summary>
/// Sliding-window attention (Beltagy et al., "Longformer: The Long-Document Transformer", 2020; as
/// Mistral 7B, Gemma 2/3 and Phi-3 use it): a token at position p sees only the keys at positions
/// p − window + 1 .. p. For one pass, the first slot each row may see (<see cref="Starts"/>, what
/// <see cref="Backend.Attention"/> takes) and the pass's mask with the window applied among the batch
/// (<see cref="Mask"/>). A slot's position is its index in the sequence — how the engine lays out every
/// sequence (a tree's nodes sit at slots past their depth positions, which the mask covers).
/// Buffers are reused from pass to pass, so a decoding loop allocates nothing.
/// </summary>
public sealed class SlidingWindow
{
    private int[] _starts = [];
    private int _rows;
    private AttentionMask? _windowed;

    /// <summary>Keys per window (the model's <c>sliding_window</c>).</summary>
    public int Size { get; private set; }

    /// <summary>Per row of the pass, the first slot it sees.</summary>
    public ReadOnlySpan<int> Starts => _starts.AsSpan(0, _rows);

    /// <summary>The pass's mask with the window applied (the causal mask itself: the starts cover it).</summary>
    public AttentionMask Mask { get; private set; } = AttentionMask.Causal;

    /// <summary>Sets the window of <paramref name="size"/> keys for a pass at <paramref name="positions"/> under <paramref name="mask"/>.</summary>
    public void Set(int size, ReadOnlySpan<int> positions, AttentionMask mask)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(size, 1);
        Size = size;
        _rows = positions.Length;
        if (_starts.Length < _rows)
            _starts = new int[Math.Max(_rows, 2 * _starts.Length)];
        for (int i = 0; i < _rows; i++)
            _starts[i] = Math.Max(0, positions[i] - size + 1);
        Mask = mask.IsCausal ? mask : _windowed = mask.Windowed(positions, size, _windowed);
    }
}
