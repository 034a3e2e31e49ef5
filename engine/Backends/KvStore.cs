namespace Engine.Backends;

/// <summary>Shape of the KV cache: per block, per layer, K and V of <see cref="BlockSize"/> tokens.</summary>
public sealed record KvLayout(int Layers, int KvHeads, int HeadDim, int BlockSize)
{
    /// <summary>Floats of K (or of V) for one layer of one block: kvHeads × BlockSize × headDim, in the order the backend chooses.</summary>
    public int LayerBlockFloats => KvHeads * BlockSize * HeadDim;
}

/// <summary>
/// Backend storage of KV-cache blocks, addressed by block id. Which block belongs to which sequence is
/// decided by <see cref="Cache.KvCache"/>; the store only holds memory and copies it.
/// </summary>
public abstract class KvStore : IDisposable
{
    protected KvStore(KvLayout layout) => Layout = layout;

    public KvLayout Layout { get; }

    /// <summary>Makes block <paramref name="block"/> exist (contents undefined until written).</summary>
    public abstract void EnsureBlock(int block);

    /// <summary>
    /// Commits the memory of every block made so far, now rather than on first write (a server reserving its
    /// pool at start). The default does nothing: a backend whose blocks are committed when made (device
    /// memory) has nothing to add.
    /// </summary>
    public virtual void Commit()
    {
    }

    /// <summary>Copies all layers of a whole block (copy-on-write after a fork).</summary>
    public abstract void CopyBlock(int source, int destination);

    /// <summary>Copies one token's K and V in every layer between two (block, offset) slots.</summary>
    public abstract void CopySlot(int sourceBlock, int sourceOffset, int destinationBlock, int destinationOffset);

    public abstract void Dispose();
}
