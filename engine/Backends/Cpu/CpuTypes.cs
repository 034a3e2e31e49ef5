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
/// KV blocks in native memory (64-byte aligned, zeroed), allocated on first use: per layer, K of every
/// kv head transposed ([kvHead][headDim][slot]), then V ([kvHead][slot][headDim]) — the layout
/// <see cref="Kernels.Attention"/> reads. Native rather than managed so that the decode loop allocates
/// nothing on the managed heap when a sequence grows into a new block, and so kernels keep raw
/// pointers (<see cref="Pointers"/>) without pinning. Freed on <see cref="Dispose"/>.
/// </summary>
internal sealed unsafe class CpuKvStore(KvLayout layout) : KvStore(layout)
{
    private float*[] _pointers = new float*[16];
    private int _count;

    /// <summary>Start of each block's memory, by block id.</summary>
    public float*[] Pointers => _pointers;

    private int BlockFloats => 2 * Layout.Layers * Layout.LayerBlockFloats;

    private nuint BlockBytes => (nuint)BlockFloats * sizeof(float);

    public override void EnsureBlock(int block)
    {
        ObjectDisposedException.ThrowIf(_pointers.Length == 0, this);
        while (_count <= block)
        {
            if (_pointers.Length <= _count)
            {
                var grown = new float*[_pointers.Length * 2];
                System.Array.Copy(_pointers, grown, _pointers.Length);
                _pointers = grown;
            }
            var memory = (float*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc(BlockBytes, 64);
            System.Runtime.InteropServices.NativeMemory.Clear(memory, BlockBytes);
            _pointers[_count++] = memory;
        }
    }

    private Span<float> Block(int block) => new(_pointers[block], BlockFloats);

    public override void CopyBlock(int source, int destination) => Block(source).CopyTo(Block(destination));

    public override void CopySlot(int sourceBlock, int sourceOffset, int destinationBlock, int destinationOffset)
    {
        int hd = Layout.HeadDim, bs = Layout.BlockSize;
        var src = Block(sourceBlock);
        var dst = Block(destinationBlock);
        for (int layer = 0; layer < Layout.Layers; layer++)
        {
            for (int h = 0; h < Layout.KvHeads; h++)
            {
                int k = Kernels.Attention.KeyOffset(Layout, layer, h);
                for (int d = 0; d < hd; d++)
                    dst[k + d * bs + destinationOffset] = src[k + d * bs + sourceOffset];
                int v = Kernels.Attention.ValueOffset(Layout, layer, h);
                src.Slice(v + sourceOffset * hd, hd).CopyTo(dst.Slice(v + destinationOffset * hd, hd));
            }
        }
    }

    public override void Dispose()
    {
        Free();
        GC.SuppressFinalize(this);
    }

    // A session its host forgot to dispose must not leak the native blocks.
    ~CpuKvStore() => Free();

    private void Free()
    {
        for (int i = 0; i < _count; i++)
            System.Runtime.InteropServices.NativeMemory.AlignedFree(_pointers[i]);
        _count = 0;
        _pointers = [];
    }
}
