using Engine.Backends;

namespace Engine.Cuda.Kernels;

/// <summary>
/// Typed launchers for kernels/kvcache.cu (layout: cache[block][layer][K|V][kvHead][slot][headDim]).
/// CPU reference: <see cref="Backends.Cpu.Kernels.KvCacheKernels"/> on the same layout.
/// </summary>
public static class KvCache
{
    private const string File = "kvcache";

    /// <summary>Elements of one block: every layer's K and V.</summary>
    public static long BlockFloats(KvLayout layout) => Backends.Cpu.Kernels.KvCacheKernels.BlockFloats(layout);

    /// <summary>The kernel-name suffix of a cache whose elements are <typeparamref name="T"/>: f32 (float) or f16 (Half).</summary>
    public static string Suffix<T>() where T : unmanaged =>
        typeof(T) == typeof(float) ? "f32" : typeof(T) == typeof(Half) ? "f16"
        : throw new NotSupportedException($"a KV cache of {typeof(T).Name} elements (float32 or binary16 only)");

    /// <summary>
    /// store_kv_f32: row r of k and v ([n, kvHeads·headDim]) into slot firstSlot + r of layer
    /// <paramref name="layer"/>; table[s / blockSize] is the block of slot s (tableLength entries).
    /// </summary>
    public static void StoreKvF32(GpuDevice device, DeviceSpan<float> k, DeviceSpan<float> v, int n, DeviceSpan<int> table, int tableLength,
        int firstSlot, DeviceSpan<float> cache, int blocks, KvLayout layout, int layer) =>
        StoreKv(device, k, v, n, table, tableLength, firstSlot, cache, blocks, layout, layer);

    /// <summary>store_kv_f32 or store_kv_f16 by the cache's element type (binary16: each value rounded to nearest even).</summary>
    public static unsafe void StoreKv<T>(GpuDevice device, DeviceSpan<float> k, DeviceSpan<float> v, int n, DeviceSpan<int> table, int tableLength,
        int firstSlot, DeviceSpan<T> cache, int blocks, KvLayout layout, int layer) where T : unmanaged
    {
        long cols = (long)layout.KvHeads * layout.HeadDim;
        if (n <= 0 || k.Length < n * cols || v.Length < n * cols)
            throw new ArgumentException($"store_kv_f32: k {k.Length} and v {v.Length} elements for [{n}, {cols}]");
        if ((uint)layer >= (uint)layout.Layers)
            throw new ArgumentOutOfRangeException(nameof(layer), $"store_kv_f32: layer {layer} of {layout.Layers}");
        if (firstSlot < 0 || (firstSlot + n + layout.BlockSize - 1) / layout.BlockSize > tableLength || table.Length < tableLength)
            throw new ArgumentException($"store_kv_f32: slots {firstSlot}..{firstSlot + n - 1} need more than the {tableLength} blocks of the table");
        if (cache.Length < blocks * BlockFloats(layout))
            throw new ArgumentException($"store_kv_f32: the cache holds {cache.Length} floats, {blocks} blocks need {blocks * BlockFloats(layout)}");
        if (layout.KvHeads > 65535)
            throw new ArgumentOutOfRangeException(nameof(layout), $"store_kv_f32: {layout.KvHeads} kv heads exceed the grid's 65535");
        var fn = device.Function(File, "store_kv_" + Suffix<T>());
        IntPtr pk = k.Pointer, pv = v.Pointer, pt = table.Pointer, pc = cache.Pointer;
        int layers = layout.Layers, kvHeads = layout.KvHeads, headDim = layout.HeadDim, blockSize = layout.BlockSize;
        void** args = stackalloc void*[10];
        args[0] = &pk;
        args[1] = &pv;
        args[2] = &pt;
        args[3] = &firstSlot;
        args[4] = &pc;
        args[5] = &layer;
        args[6] = &layers;
        args[7] = &kvHeads;
        args[8] = &headDim;
        args[9] = &blockSize;
        device.Launch(fn, (n, kvHeads, 1), (Math.Min(1024, (headDim + 31) / 32 * 32), 1, 1), 0, args);
    }

    /// <summary>copy_slot_f32: one token's K and V in every layer from (srcBlock, srcSlot) to (dstBlock, dstSlot).</summary>
    public static void CopySlotF32(GpuDevice device, DeviceSpan<float> cache, int blocks, KvLayout layout, int srcBlock, int srcSlot,
        int dstBlock, int dstSlot) => CopySlot(device, cache, blocks, layout, srcBlock, srcSlot, dstBlock, dstSlot);

    /// <summary>copy_slot_f32 or copy_slot_f16 by the cache's element type.</summary>
    public static unsafe void CopySlot<T>(GpuDevice device, DeviceSpan<T> cache, int blocks, KvLayout layout, int srcBlock, int srcSlot,
        int dstBlock, int dstSlot) where T : unmanaged
    {
        if ((uint)srcBlock >= (uint)blocks || (uint)dstBlock >= (uint)blocks || (uint)srcSlot >= (uint)layout.BlockSize || (uint)dstSlot >= (uint)layout.BlockSize)
            throw new ArgumentOutOfRangeException(nameof(srcBlock), $"copy_slot_f32: ({srcBlock}, {srcSlot}) → ({dstBlock}, {dstSlot}) outside {blocks} blocks of {layout.BlockSize}");
        if (cache.Length < blocks * BlockFloats(layout))
            throw new ArgumentException($"copy_slot_f32: the cache holds {cache.Length} floats, {blocks} blocks need {blocks * BlockFloats(layout)}");
        var fn = device.Function(File, "copy_slot_" + Suffix<T>());
        IntPtr pc = cache.Pointer;
        int layers = layout.Layers, kvHeads = layout.KvHeads, headDim = layout.HeadDim, blockSize = layout.BlockSize;
        void** args = stackalloc void*[9];
        args[0] = &pc;
        args[1] = &srcBlock;
        args[2] = &srcSlot;
        args[3] = &dstBlock;
        args[4] = &dstSlot;
        args[5] = &layers;
        args[6] = &kvHeads;
        args[7] = &headDim;
        args[8] = &blockSize;
        device.Launch(fn, (layers * 2 * kvHeads, 1, 1), (Math.Min(1024, (headDim + 31) / 32 * 32), 1, 1), 0, args);
    }
}
