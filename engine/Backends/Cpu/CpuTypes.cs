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

/// <summary>
/// KV blocks as pinned managed arrays, allocated on first use: [layer][K,V][kvHead][slot][headDim].
/// Pinned so kernels can keep raw pointers to them (<see cref="Pointers"/>) instead of pinning per access.
/// </summary>
internal sealed unsafe class CpuKvStore(KvLayout layout) : KvStore(layout)
{
    private readonly List<float[]> _blocks = [];
    private float*[] _pointers = new float*[16];

    public IReadOnlyList<float[]> Blocks => _blocks;

    /// <summary>Start of each block's memory, by block id.</summary>
    public float*[] Pointers => _pointers;

    private int BlockFloats => 2 * Layout.Layers * Layout.LayerBlockFloats;

    public override void EnsureBlock(int block)
    {
        while (_blocks.Count <= block)
        {
            var array = GC.AllocateArray<float>(BlockFloats, pinned: true);
            if (_pointers.Length <= _blocks.Count)
            {
                var grown = new float*[_pointers.Length * 2];
                System.Array.Copy(_pointers, grown, _pointers.Length);
                _pointers = grown;
            }
            _pointers[_blocks.Count] = (float*)System.Runtime.CompilerServices.Unsafe.AsPointer(ref System.Runtime.InteropServices.MemoryMarshal.GetArrayDataReference(array));
            _blocks.Add(array);
        }
    }

    public override void CopyBlock(int source, int destination) => _blocks[source].AsSpan().CopyTo(_blocks[destination]);

    public override void CopySlot(int sourceBlock, int sourceOffset, int destinationBlock, int destinationOffset)
    {
        int hd = Layout.HeadDim, bs = Layout.BlockSize;
        var src = _blocks[sourceBlock];
        var dst = _blocks[destinationBlock];
        // Each (layer, K|V, kvHead) run holds BlockSize slots of headDim floats.
        for (int run = 0; run < 2 * Layout.Layers * Layout.KvHeads; run++)
            System.Array.Copy(src, (run * bs + sourceOffset) * hd, dst, (run * bs + destinationOffset) * hd, hd);
    }

    public override void Dispose() => _blocks.Clear();
}
