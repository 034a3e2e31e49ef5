using Engine.Tensors;

namespace Engine.Backends.Cpu;

internal sealed class CpuBuffer(long floats) : DeviceBuffer
{
    public float[] Data { get; } = new float[floats];

    public override long Length => Data.Length;

    public override void Dispose() { }
}

/// <summary>A weight matrix used in place from the mapped file.</summary>
internal sealed class CpuMatrix(TensorView view) : DeviceMatrix(view.Name, view.Type, checked((int)view.RowCount), checked((int)view.RowLength))
{
    public TensorView View { get; } = view;
}

internal sealed class CpuVector(string name, float[] data) : DeviceVector(name, data.Length)
{
    public float[] Data { get; } = data;
}

/// <summary>KV blocks as managed arrays, allocated on first use: [layer][K,V][kvHead][slot][headDim].</summary>
internal sealed class CpuKvStore(KvLayout layout) : KvStore(layout)
{
    private readonly List<float[]> _blocks = [];

    public IReadOnlyList<float[]> Blocks => _blocks;

    private int BlockFloats => 2 * Layout.Layers * Layout.LayerBlockFloats;

    public override void EnsureBlock(int block)
    {
        while (_blocks.Count <= block)
            _blocks.Add(new float[BlockFloats]);
    }

    public override void CopyBlock(int source, int destination) => _blocks[source].AsSpan().CopyTo(_blocks[destination]);

    public override void CopySlot(int sourceBlock, int sourceOffset, int destinationBlock, int destinationOffset)
    {
        int hd = Layout.HeadDim, bs = Layout.BlockSize;
        var src = _blocks[sourceBlock];
        var dst = _blocks[destinationBlock];
        // Each (layer, K|V, kvHead) run holds BlockSize slots of headDim floats.
        for (int run = 0; run < 2 * Layout.Layers * Layout.KvHeads; run++)
            Array.Copy(src, (run * bs + sourceOffset) * hd, dst, (run * bs + destinationOffset) * hd, hd);
    }

    public override void Dispose() => _blocks.Clear();
}
