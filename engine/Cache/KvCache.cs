using Engine.Backends;

namespace Engine.Cache;

/// <summary>The KV cache has no free block left for a sequence to grow.</summary>
public sealed class KvCacheFullException(string message) : InvalidOperationException(message);

/// <summary>
/// A pool of fixed-size KV blocks shared by the sequences of one model (the paged layout of Kwon et al.,
/// "Efficient Memory Management for Large Language Model Serving with PagedAttention", 2023). Blocks are
/// reference-counted: a forked sequence shares its parent's blocks and copies one only when it writes
/// into it, so a common prefix is stored once. Block memory lives in the backend's <see cref="KvStore"/>.
/// </summary>
public sealed class KvCache : IDisposable
{
    private readonly int[] _refs;
    private readonly Stack<int> _free = new();
    private int _created;

    /// <param name="maxTokens">The longest a sequence of this cache may grow.</param>
    /// <param name="poolTokens">
    /// Tokens the pool holds at once, across sequences (0: <paramref name="maxTokens"/>, one sequence's
    /// worth). Larger for several sequences at once (a server); smaller for a sliding-window model, whose
    /// sequences drop the blocks the window no longer sees.
    /// </param>
    public KvCache(Backend backend, KvLayout layout, int maxTokens, int poolTokens = 0)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxTokens, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(poolTokens);
        Layout = layout;
        MaxSequenceBlocks = (maxTokens + layout.BlockSize - 1) / layout.BlockSize;
        MaxBlocks = poolTokens > 0 ? (poolTokens + layout.BlockSize - 1) / layout.BlockSize : MaxSequenceBlocks;
        _refs = new int[MaxBlocks];
        Store = backend.CreateKvStore(layout, MaxBlocks);
    }

    public KvLayout Layout { get; }

    public int BlockSize => Layout.BlockSize;

    /// <summary>Most blocks this cache will hand out (the pool).</summary>
    public int MaxBlocks { get; }

    /// <summary>Most blocks one sequence's table spans (its longest length in blocks).</summary>
    public int MaxSequenceBlocks { get; }

    /// <summary>Blocks held by at least one sequence.</summary>
    public int UsedBlocks => _created - _free.Count;

    /// <summary>Blocks the pool can still hand out.</summary>
    public int FreeBlocks => MaxBlocks - UsedBlocks;

    public KvStore Store { get; }

    /// <summary>
    /// The sliding window every layer of the model attends through, or 0: then a sequence keeps only the
    /// blocks that a later pass can still see — those holding its last <see cref="Window"/> +
    /// <see cref="WindowSlack"/> tokens — and memory follows the window, not the context.
    /// </summary>
    public int Window { get; private set; }

    /// <summary>
    /// Tokens kept beyond the window (the model's largest pass): what a rollback may undo — a rejected
    /// draft tree, a token decoded again — without needing a dropped block back.
    /// </summary>
    public int WindowSlack { get; private set; }

    /// <summary>Makes the sequences of this cache drop the blocks a sliding window of <paramref name="window"/> no longer sees (see <see cref="Window"/>).</summary>
    public void KeepOnlyWindow(int window, int slack)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(window, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(slack);
        (Window, WindowSlack) = (window, slack);
    }

    /// <summary>
    /// For a model whose windowed layers sit between global ones (Gemma 2 and 3): the cache of the windowed
    /// layers, which keeps only what their window sees (<see cref="KeepOnlyWindow"/>), while this cache keeps
    /// the global layers' whole context. Null when every layer lives here. Each sequence of this cache has a
    /// sequence in the local one, kept at the same length (<see cref="KvSequence.Local"/>).
    /// </summary>
    public KvCache? Local { get; private set; }

    /// <summary>Where the K/V of model layer <paramref name="layer"/> live: this cache's store or the local one's, and its index there.</summary>
    public (bool Local, int Layer) Place(int layer) =>
        _places is null ? (false, layer) : (uint)layer < (uint)_places.Length ? _places[layer]
            : throw new ArgumentOutOfRangeException(nameof(layer), $"layer {layer} of a cache for {_places.Length} layers");

    private (bool Local, int Layer)[]? _places;

    /// <summary>
    /// A cache whose windowed layers (<paramref name="windowed"/>[l]) live in a <see cref="Local"/> cache
    /// that follows the window: this cache holds the other layers, for the whole context.
    /// </summary>
    public static KvCache Hybrid(Backend backend, int layers, int kvHeads, int headDim, int blockSize, int maxTokens, bool[] windowed,
        int window, int slack, int localPoolTokens, int poolTokens = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNotEqual(windowed.Length, layers);
        int local = windowed.Count(w => w), global = layers - local;
        if (local == 0 || global == 0)
            throw new ArgumentException("a hybrid cache needs windowed and global layers; use one cache otherwise", nameof(windowed));
        var places = new (bool, int)[layers];
        int nextLocal = 0, nextGlobal = 0;
        for (int l = 0; l < layers; l++)
            places[l] = windowed[l] ? (true, nextLocal++) : (false, nextGlobal++);
        var cache = new KvCache(backend, new KvLayout(global, kvHeads, headDim, blockSize), maxTokens, poolTokens) { _places = places };
        try
        {
            cache.Local = new KvCache(backend, new KvLayout(local, kvHeads, headDim, blockSize), maxTokens, localPoolTokens);
            cache.Local.KeepOnlyWindow(window, slack);
        }
        catch
        {
            cache.Dispose();
            throw;
        }
        return cache;
    }

    /// <summary>The number of model layers this cache serves (with its local part).</summary>
    public int ModelLayers => _places?.Length ?? Layout.Layers;

    /// <summary>A new, empty sequence.</summary>
    public KvSequence CreateSequence() => new(this);

    /// <summary>
    /// A sequence whose first <paramref name="length"/> tokens are already in <paramref name="blocks"/> —
    /// blocks another holder keeps (a prefix cache): the sequence shares them, and copies one only when it
    /// writes into it. Not for sliding-window caches, whose sequences drop blocks.
    /// </summary>
    public KvSequence CreateSequence(ReadOnlySpan<int> blocks, int length)
    {
        if (Window > 0 || Local is not null)
            throw new InvalidOperationException("a sliding-window cache cannot start a sequence from shared blocks");
        if (length < 0 || length > blocks.Length * BlockSize || blocks.Length > MaxSequenceBlocks)
            throw new ArgumentOutOfRangeException(nameof(length), $"{length} tokens in {blocks.Length} blocks of {BlockSize} (at most {MaxSequenceBlocks} blocks)");
        foreach (int b in blocks)
        {
            if ((uint)b >= (uint)_created || _refs[b] == 0)
                throw new ArgumentException($"block {b} is not held by anyone", nameof(blocks));
        }
        return new KvSequence(this, blocks, length);
    }

    /// <summary>
    /// Makes every block of the pool now and has the backend commit their memory (<see cref="KvStore.Commit"/>),
    /// as llama.cpp's server and vLLM hold their whole cache from the start: the memory a server needs is
    /// taken, or refused, when it starts rather than mid-request, and no step pays for blocks written the
    /// first time. Call before any sequence holds a block.
    /// </summary>
    /// <exception cref="InvalidOperationException">A sequence already holds blocks.</exception>
    /// <exception cref="InsufficientMemoryException">The system has not the memory for the pool.</exception>
    public void Reserve()
    {
        if (UsedBlocks != 0)
            throw new InvalidOperationException($"reserve the KV pool before use: {UsedBlocks} blocks are held");
        if (_created < MaxBlocks)
        {
            Store.EnsureBlock(MaxBlocks - 1);
            // on the free stack so that block ids come out in order, lowest first, as when made on demand
            for (int b = MaxBlocks - 1; b >= _created; b--)
                _free.Push(b);
            _created = MaxBlocks;
        }
        Store.Commit();
        Local?.Reserve();
    }

    /// <summary>Blocks made so far (all of them after <see cref="Reserve"/>).</summary>
    public int CreatedBlocks => _created;

    internal int Allocate()
    {
        int block;
        if (_free.Count > 0)
            block = _free.Pop();
        else if (_created < MaxBlocks)
        {
            block = _created++;
            Store.EnsureBlock(block);
        }
        else
            throw new KvCacheFullException($"the KV cache is full ({MaxBlocks} blocks of {BlockSize} tokens)");
        _refs[block] = 1;
        return block;
    }

    internal void Retain(int block) => _refs[block]++;

    internal void Release(int block)
    {
        if (--_refs[block] == 0)
            _free.Push(block);
    }

    internal bool IsShared(int block) => _refs[block] > 1;

    internal int RefCount(int block) => _refs[block];

    public void Dispose()
    {
        Store.Dispose();
        Local?.Dispose();
    }
}
