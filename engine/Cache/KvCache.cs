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

    public KvCache(Backend backend, KvLayout layout, int maxTokens)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxTokens, 1);
        Layout = layout;
        MaxBlocks = (maxTokens + layout.BlockSize - 1) / layout.BlockSize;
        _refs = new int[MaxBlocks];
        Store = backend.CreateKvStore(layout, MaxBlocks);
    }

    public KvLayout Layout { get; }

    public int BlockSize => Layout.BlockSize;

    /// <summary>Most blocks this cache will hand out.</summary>
    public int MaxBlocks { get; }

    /// <summary>Blocks held by at least one sequence.</summary>
    public int UsedBlocks => _created - _free.Count;

    public KvStore Store { get; }

    /// <summary>A new, empty sequence.</summary>
    public KvSequence CreateSequence() => new(this);

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

    public void Dispose() => Store.Dispose();
}
