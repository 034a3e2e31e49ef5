using Engine.Backends;

namespace Engine.Cuda.Kernels;

/// <summary>
/// Typed launcher for kernels/rope_kv.cu: RoPE on q and k and the store of k and v into the paged
/// cache in one launch. CPU reference: <see cref="Backends.Cpu.Kernels.Rope.RopeF32"/> on q and k, then
/// <see cref="Backends.Cpu.Kernels.KvCacheKernels.StoreKvF32"/> — the composition
/// <see cref="Backend.RopeStoreKv"/> spells out; the fused kernel gives the same bits.
/// </summary>
public static class RopeKv
{
    private const string File = "rope_kv";

    /// <summary>
    /// rope_store_kv_f32 / _f16: rotates q ([n, heads·headDim]) and k ([n, kvHeads·headDim]) in place by
    /// each row's position (cos and sin times <paramref name="mscale"/>), and writes k and v into slots
    /// firstSlot.. of layer <paramref name="layer"/>.
    /// </summary>
    public static unsafe void RopeStoreKv<T>(GpuDevice device, DeviceSpan<float> q, DeviceSpan<float> k, DeviceSpan<float> v, int n, int heads,
        DeviceSpan<int> positions, DeviceSpan<double> invFreq, int pairs, bool neox, DeviceSpan<int> table, int tableLength, int firstSlot,
        DeviceSpan<T> cache, int blocks, KvLayout layout, int layer, double mscale = 1) where T : unmanaged
    {
        string name = "rope_store_kv_" + KvCache.Suffix<T>();
        int hd = layout.HeadDim, kvHeads = layout.KvHeads;
        if (n <= 0 || heads <= 0 || heads % kvHeads != 0)
            throw new ArgumentOutOfRangeException(nameof(heads), $"{name}: {n} rows, {heads} heads over {kvHeads} kv heads");
        if (pairs <= 0 || 2 * pairs > hd || pairs > 1024)
            throw new ArgumentOutOfRangeException(nameof(pairs), $"{name}: {pairs} rotated pairs for a head of {hd}");
        long qCols = (long)heads * hd, kvCols = (long)kvHeads * hd;
        if (q.Length < n * qCols || k.Length < n * kvCols || v.Length < n * kvCols)
            throw new ArgumentException($"{name}: q {q.Length}, k {k.Length}, v {v.Length} elements for {n} rows of {qCols} and {kvCols}");
        if (positions.Length < n || invFreq.Length < pairs)
            throw new ArgumentException($"{name}: {positions.Length} positions for {n} rows, {invFreq.Length} frequencies for {pairs} pairs");
        if ((uint)layer >= (uint)layout.Layers)
            throw new ArgumentOutOfRangeException(nameof(layer), $"{name}: layer {layer} of {layout.Layers}");
        if (firstSlot < 0 || (firstSlot + n + layout.BlockSize - 1) / layout.BlockSize > tableLength || table.Length < tableLength)
            throw new ArgumentException($"{name}: slots {firstSlot}..{firstSlot + n - 1} need more than the {tableLength} blocks of the table");
        if (cache.Length < blocks * KvCache.BlockFloats(layout))
            throw new ArgumentException($"{name}: the cache holds {cache.Length} elements, {blocks} blocks need {blocks * KvCache.BlockFloats(layout)}");
        if (heads + kvHeads > 65535)
            throw new ArgumentOutOfRangeException(nameof(heads), $"{name}: {heads} + {kvHeads} heads exceed the grid's 65535");
        var fn = device.Function(File, name);
        IntPtr pq = q.Pointer, pk = k.Pointer, pv = v.Pointer, pp = positions.Pointer, pf = invFreq.Pointer, pt = table.Pointer, pc = cache.Pointer;
        int neoxFlag = neox ? 1 : 0, layers = layout.Layers, blockSize = layout.BlockSize;
        void** args = stackalloc void*[17];
        args[0] = &pq;
        args[1] = &pk;
        args[2] = &pv;
        args[3] = &pp;
        args[4] = &pf;
        args[5] = &heads;
        args[6] = &kvHeads;
        args[7] = &hd;
        args[8] = &pairs;
        args[9] = &neoxFlag;
        args[10] = &pt;
        args[11] = &firstSlot;
        args[12] = &pc;
        args[13] = &layer;
        args[14] = &layers;
        args[15] = &blockSize;
        args[16] = &mscale;
        device.Launch(fn, (n, heads + kvHeads, 1), ((pairs + 31) / 32 * 32, 1, 1), 0, args);
    }
}
