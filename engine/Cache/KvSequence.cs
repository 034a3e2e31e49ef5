namespace Engine.Cache;

/// <summary>
/// One sequence's view of the KV cache: a block table and a length. Slot s (the token at sequence
/// index s) lives in block <c>Blocks[s / BlockSize]</c> at offset <c>s % BlockSize</c>.
/// Supports what decoding needs: append (via the model's forward), <see cref="Truncate"/> to roll back
/// rejected tokens, <see cref="Fork"/> to share a prefix, and <see cref="Compact"/> to keep an accepted
/// path of a verified draft tree in place. Under a sliding window (<see cref="KvCache.Window"/>) the
/// leading blocks no pass can see any more are released as the sequence grows.
/// </summary>
public sealed class KvSequence : IDisposable
{
    private readonly KvCache _cache;
    private readonly List<int> _blocks;
    private int _dropped; // leading blocks released under the cache's sliding window (their table entries are -1)
    private bool _disposed;

    /// <summary>A dropped block's entry in the block table: no pass reads it (every row's window starts later).</summary>
    public const int DroppedBlock = -1;

    internal KvSequence(KvCache cache, bool withLocal = true)
    {
        _cache = cache;
        _blocks = new List<int>(Math.Min(cache.MaxSequenceBlocks, 1024)); // no regrowth while decoding (a typical context)
        if (withLocal && cache.Local is { } local)
            Local = new KvSequence(local);
    }

    internal KvSequence(KvCache cache, ReadOnlySpan<int> blocks, int length)
        : this(cache, withLocal: false)
    {
        foreach (int b in blocks)
        {
            cache.Retain(b);
            _blocks.Add(b);
        }
        Length = length;
        Truncate(length); // drops whole blocks past the length
    }

    /// <summary>
    /// The same tokens in the cache's <see cref="KvCache.Local"/> part (the windowed layers), or null. Every
    /// operation on this sequence is applied to it too, so the two always have the same length.
    /// </summary>
    public KvSequence? Local { get; private set; }

    public KvCache Cache => _cache;

    /// <summary>Tokens whose K/V are in the cache.</summary>
    public int Length { get; private set; }

    /// <summary>The block table (block ids in sequence order).</summary>
    public IReadOnlyList<int> Blocks => _blocks;

    /// <summary>The block table as a span, for backends.</summary>
    public ReadOnlySpan<int> BlockTable => System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_blocks);

    /// <summary>
    /// Makes slots [Length, Length + count) writable: allocates blocks and gives this sequence its own
    /// copy of any shared block in that range. Does not change <see cref="Length"/>; the forward pass
    /// calls <see cref="Commit"/> once the entries are written.
    /// </summary>
    public void Reserve(int count)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        if (count == 0)
            return;
        int bs = _cache.BlockSize;
        int lastBlock = (Length + count - 1) / bs;
        if (lastBlock >= _cache.MaxSequenceBlocks)
            throw new KvCacheFullException($"{Length + count} tokens exceed the KV cache capacity ({_cache.MaxSequenceBlocks * bs} tokens)");
        int added = 0;
        try
        {
            while (_blocks.Count <= lastBlock)
            {
                _blocks.Add(_cache.Allocate());
                added++;
            }
        }
        catch
        {
            for (; added > 0; added--)
            {
                _cache.Release(_blocks[^1]);
                _blocks.RemoveAt(_blocks.Count - 1);
            }
            throw;
        }
        MakeExclusive(Length / bs, lastBlock);
        Local?.Reserve(count);
    }

    /// <summary>
    /// Marks <paramref name="count"/> reserved slots as holding valid entries. Under a sliding window
    /// (<see cref="KvCache.Window"/>), then releases the leading blocks no later pass can see.
    /// </summary>
    public void Commit(int count)
    {
        if (count < 0 || Length + count > _blocks.Count * _cache.BlockSize)
            throw new InvalidOperationException($"cannot commit {count} tokens: only {_blocks.Count * _cache.BlockSize - Length} are reserved");
        Local?.Commit(count);
        Length += count;
        if (_cache.Window > 0)
        {
            // a later row sits at position ≥ Length − slack and sees slots from its position − window + 1
            int firstSeen = Length - _cache.WindowSlack - _cache.Window + 1;
            for (int drop = Math.Max(0, firstSeen) / _cache.BlockSize; _dropped < drop; _dropped++)
            {
                _cache.Release(_blocks[_dropped]);
                _blocks[_dropped] = DroppedBlock;
            }
        }
    }

    /// <summary>The first slot this sequence still holds (0 unless a sliding window let it drop older blocks).</summary>
    public int FirstHeldSlot => _dropped * _cache.BlockSize;

    /// <summary>
    /// Rolls the sequence back to its first <paramref name="length"/> tokens, freeing blocks no longer needed.
    /// Under a sliding window a rollback is refused when the token after it would see a dropped block
    /// (rolling back to 0, starting over, always works).
    /// </summary>
    public void Truncate(int length)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (length < 0 || length > Length)
            throw new ArgumentOutOfRangeException(nameof(length), $"cannot truncate a sequence of {Length} tokens to {length}");
        if (length > 0 && _dropped > 0 && length - _cache.Window + 1 < FirstHeldSlot)
            throw new InvalidOperationException($"cannot roll back to {length} tokens: under the sliding window of {_cache.Window} the sequence "
                + $"keeps only the slots from {FirstHeldSlot} on, and token {length} would see from {length - _cache.Window + 1}");
        Local?.Truncate(length); // first: it refuses a rollback past its window before anything changes
        Length = length;
        int keep = (length + _cache.BlockSize - 1) / _cache.BlockSize;
        while (_blocks.Count > keep)
        {
            if (_blocks[^1] != DroppedBlock)
                _cache.Release(_blocks[^1]);
            _blocks.RemoveAt(_blocks.Count - 1);
        }
        _dropped = Math.Min(_dropped, _blocks.Count);
    }

    /// <summary>A new sequence with the same tokens, sharing this one's blocks until either writes.</summary>
    public KvSequence Fork()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var child = new KvSequence(_cache, withLocal: false) { Length = Length, _dropped = _dropped, Local = Local?.Fork() };
        foreach (int b in _blocks)
        {
            if (b != DroppedBlock)
                _cache.Retain(b);
            child._blocks.Add(b);
        }
        return child;
    }

    /// <summary>
    /// Keeps, of the tokens from <paramref name="start"/> on, only those at offsets <paramref name="keep"/>
    /// (ascending, relative to <paramref name="start"/>), moved down to be contiguous; the sequence then
    /// ends after them. Used after verifying a draft tree: the accepted path's entries stay, in order.
    /// </summary>
    public void Compact(int start, ReadOnlySpan<int> keep)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (start < 0 || start > Length)
            throw new ArgumentOutOfRangeException(nameof(start), $"start {start} is outside the sequence (length {Length})");
        int previous = -1;
        foreach (int k in keep)
        {
            if (k <= previous || start + k >= Length)
                throw new ArgumentException($"offsets to keep must be ascending and inside the sequence; got {k} after {previous} (length {Length - start} from {start})");
            previous = k;
        }
        Local?.CompactSlots(start, keep);
        CompactSlots(start, keep);
        Truncate(start + keep.Length);
    }

    /// <summary>The slot moves of <see cref="Compact"/> without its truncation (which the owning sequence does for both).</summary>
    private void CompactSlots(int start, ReadOnlySpan<int> keep)
    {
        int bs = _cache.BlockSize;
        if (keep.Length > 0)
            MakeExclusive(start / bs, (start + keep.Length - 1) / bs);
        for (int i = 0; i < keep.Length; i++)
        {
            int from = start + keep[i], to = start + i;
            if (from != to)
                _cache.Store.CopySlot(_blocks[from / bs], from % bs, _blocks[to / bs], to % bs);
        }
    }

    private void MakeExclusive(int firstBlock, int lastBlock)
    {
        for (int i = firstBlock; i <= lastBlock && i < _blocks.Count; i++)
        {
            int b = _blocks[i];
            if (!_cache.IsShared(b))
                continue;
            int copy = _cache.Allocate();
            _cache.Store.CopyBlock(b, copy);
            _cache.Release(b);
            _blocks[i] = copy;
        }
    }

    public void Dispose()
    {
        if (_disposed)
            return;
        Truncate(0);
        Local?.Dispose();
        _disposed = true;
    }
}
