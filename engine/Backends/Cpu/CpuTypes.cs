using Engine.Tensors;

namespace Engine.Backends.Cpu;

internal sealed class CpuBuffer(long floats) : DeviceBuffer
{
    public float[] Data { get; } = new float[floats];

    public override long Length => Data.Length;

    public override void Dispose() { }
}

/// <summary>A weight matrix used in place from the mapped file (repacked for the native kernels where <see cref="Repacked16"/> applies).</summary>
internal sealed class CpuMatrix(TensorView view) : DeviceMatrix(view.Name, view.Type, checked((int)view.RowCount), checked((int)view.RowLength))
{
    private Repacked16? _packed;
    private bool _disposed;

    public TensorView View { get; } = view;

    /// <summary>
    /// The repacked form the products read, made on the first call (on the thread that runs the product,
    /// before its workers start), or null where it does not apply.
    /// </summary>
    public Repacked16? Packed()
    {
        if (_packed is null && !_disposed && Repacked16.Applies(View))
        {
            lock (this)
                _packed ??= Repacked16.Pack(View);
        }
        return _packed;
    }

    /// <summary>The int8 activation format this matrix's row kernels take: Q8_0 for a repacked one (its kernels read the per-32 form), else the type's.</summary>
    public Kernels.ActivationBlock? ActivationKind() => Packed() is not null ? Kernels.ActivationBlock.Q8_0 : Kernels.MatMul.ActivationFor(Type);

    public override void Dispose()
    {
        lock (this)
        {
            _disposed = true;
            _packed?.Dispose();
            _packed = null;
        }
    }
}

internal sealed class CpuVector(string name, float[] data) : DeviceVector(name, data.Length)
{
    public float[] Data { get; } = data;
}

/// <summary>The element types of the CPU's KV cache (<see cref="CpuKvStore"/>).</summary>
public enum KvElementType
{
    /// <summary>Floats, exact.</summary>
    F32,

    /// <summary>IEEE halves, rounded to nearest on store.</summary>
    F16,

    /// <summary>Signed bytes with a float scale per head vector of each token (<see cref="Kernels.KvI8"/>).</summary>
    I8,
}

/// <summary>What a <see cref="KvElementType"/> takes.</summary>
public static class KvElementTypes
{
    /// <summary>Bytes one element takes (an 8-bit cache's scales besides).</summary>
    public static int Bytes(this KvElementType element) => element switch { KvElementType.F16 => sizeof(ushort), KvElementType.I8 => 1, _ => sizeof(float) };
}

/// <summary>
/// KV blocks in native memory (page-aligned where a block is 4 KiB or more, else 64-byte; zeroed), allocated on first use: per layer, K of every
/// kv head four dimensions at a time ([kvHead][headDim/4][slot][4], Attention.KeyIndex), then V ([kvHead][slot][headDim]) — the layout
/// <see cref="Kernels.Attention"/> reads — in float elements, F16 ones (<see cref="Half"/>) or signed bytes
/// (<see cref="Int8"/>, <see cref="Kernels.KvI8"/>), whose scales follow all layers' K and V
/// (<see cref="Kernels.Attention.ScaleOffset"/>). Native
/// rather than managed so that the decode loop allocates nothing on the managed heap when a sequence
/// grows into a new block, and so kernels keep raw pointers (<see cref="Pointers"/>) without pinning.
/// Freed on <see cref="Dispose"/>.
/// </summary>
internal sealed unsafe class CpuKvStore(KvLayout layout, KvElementType element = KvElementType.F32) : KvStore(layout)
{
    private byte*[] _pointers = new byte*[16];
    private byte*[] _allocations = new byte*[16];
    private KvArena? _arena;
    private int _count;

    /// <summary>Start of each block's memory, by block id.</summary>
    public byte*[] Pointers => _pointers;

    /// <summary>What the elements are.</summary>
    public KvElementType Element { get; } = element;

    /// <summary>Whether elements are F16.</summary>
    public bool Half => Element == KvElementType.F16;

    /// <summary>Whether elements are signed bytes with a float scale per (slot, layer, K or V, kv head).</summary>
    public bool Int8 => Element == KvElementType.I8;

    public int ElementBytes => Element.Bytes();

    private long BlockElements => 2L * Layout.Layers * Layout.LayerBlockFloats;

    /// <summary>Bytes a block takes: its elements and, 8-bit, their scales.</summary>
    public long BlockByteCount => (long)BlockBytes;

    private nuint BlockBytes => (nuint)(BlockElements * ElementBytes + (Int8 ? BlockElements / Layout.HeadDim * sizeof(float) : 0));

    public override void EnsureBlock(int block)
    {
        ObjectDisposedException.ThrowIf(_pointers.Length == 0, this);
        while (_count <= block)
        {
            if (_pointers.Length <= _count)
            {
                var grown = new byte*[_pointers.Length * 2];
                System.Array.Copy(_pointers, grown, _pointers.Length);
                _pointers = grown;
                var allocations = new byte*[grown.Length];
                System.Array.Copy(_allocations, allocations, _allocations.Length);
                _allocations = allocations;
            }
            // Page-aligned: a head's keys (or values) of one block are one or more whole 4 KiB pages (64-wide
            // F16 heads in blocks of 32: exactly one), so attention reads each as whole pages instead of
            // straddling two (measured: one (row, head) over 16 sequences' cache at context 256, one
            // thread, 4.0-4.6 -> 2.9-3.2 µs). Zeroed by the system (mmap, or calloc, which skips the clear
            // for fresh pages: a 1.2 MiB memset per new block was 2% of a serving run's samples).
            if (KvArena.Supported && BlockBytes >= KvArena.MinBlockBytes)
            {
                _arena ??= new KvArena(BlockBytes);
                _pointers[_count++] = _arena.Allocate();
                continue;
            }
            nuint alignment = BlockBytes >= 4096 ? 4096u : 64u;
            var allocation = (byte*)System.Runtime.InteropServices.NativeMemory.AllocZeroed(BlockBytes + alignment);
            _allocations[_count] = allocation;
            _pointers[_count++] = (byte*)(((nuint)allocation + alignment - 1) & ~(alignment - 1));
        }
    }

    /// <summary>
    /// Faults in every page of the blocks made so far. Fresh blocks are zero pages the system maps on first
    /// write, and on the VM this was measured on that first write is expensive: a 16-client serving run of
    /// the 110M shape spent ~0.7 ms of each ~10 ms step storing keys and values into blocks never written
    /// before (the same step into reused blocks: ~0.6 ms less).
    /// </summary>
    public override void Commit()
    {
        for (int b = 0; b < _count; b++)
        {
            if (_allocations[b] == null && KvArena.Populate(_pointers[b], BlockBytes))
                continue;
            KvArena.Touch(_pointers[b], BlockBytes);
        }
    }

    public override void CopyBlock(int source, int destination) =>
        Buffer.MemoryCopy(_pointers[source], _pointers[destination], (long)BlockBytes, (long)BlockBytes);

    public override void CopySlot(int sourceBlock, int sourceOffset, int destinationBlock, int destinationOffset)
    {
        int hd = Layout.HeadDim, bs = Layout.BlockSize, size = ElementBytes;
        byte* src = _pointers[sourceBlock], dst = _pointers[destinationBlock];
        for (int layer = 0; layer < Layout.Layers; layer++)
        {
            for (int h = 0; h < Layout.KvHeads; h++)
            {
                long k = Kernels.Attention.KeyOffset(Layout, layer, h);
                for (int d = 0; d < hd; d++)
                {
                    long from = k + Kernels.Attention.KeyIndex(d, sourceOffset, bs, hd), to = k + Kernels.Attention.KeyIndex(d, destinationOffset, bs, hd);
                    Buffer.MemoryCopy(src + from * size, dst + to * size, size, size);
                }
                long v = Kernels.Attention.ValueOffset(Layout, layer, h);
                Buffer.MemoryCopy(src + (v + (long)sourceOffset * hd) * size, dst + (v + (long)destinationOffset * hd) * size, (long)hd * size, (long)hd * size);
                if (Int8)
                {
                    for (int part = 0; part < 2; part++)
                    {
                        long scales = Kernels.Attention.ScaleOffset(Layout, layer, h, part == 1);
                        ((float*)(dst + scales))[destinationOffset] = ((float*)(src + scales))[sourceOffset];
                    }
                }
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
        {
            if (_allocations[i] != null)
                System.Runtime.InteropServices.NativeMemory.Free(_allocations[i]);
        }
        _arena?.Dispose();
        _arena = null;
        _count = 0;
        _pointers = [];
        _allocations = [];
    }
}
