using Engine.Tensors;

namespace Engine.Cuda.Kernels;

/// <summary>
/// Typed launchers for kernels/chunk_sparse_ffn.cu (BlockFFN's chunk-sparse FFN). CPU reference:
/// <see cref="Backends.Cpu.Kernels.ChunkSparseFfn"/>.
/// </summary>
public static class ChunkSparseFfn
{
    private const string File = "chunk_sparse_ffn";
    private const int Warps = 4;

    /// <summary>
    /// chunk_sparse_up_&lt;type&gt;: h [active, n, size] = silu(up_e · x[c]) · scores[c, e] for the active blocks e.
    /// up: [blocks·size, cols] of <paramref name="type"/>; x: [n, cols]; scores: [n, blocks].
    /// </summary>
    public static unsafe void Up(GpuDevice device, GgmlType type, DeviceSpan<byte> up, int blocks, int size, int cols, DeviceSpan<float> x, int n,
        DeviceSpan<float> scores, DeviceSpan<int> active, int activeCount, DeviceSpan<float> h)
    {
        long rowBytes = WeightFormats.CheckMatrix("chunk_sparse_up", type, blocks * size, cols, up.Length);
        if (n < 1 || activeCount < 1 || activeCount > blocks || x.Length < (long)n * cols || scores.Length < (long)n * blocks
            || active.Length < activeCount || h.Length < (long)activeCount * n * size)
            throw new ArgumentException($"chunk_sparse_up: {n} rows, {activeCount} of {blocks} blocks of {size}; x {x.Length}, scores {scores.Length}, h {h.Length}");
        var fn = device.Function(File, "chunk_sparse_up_" + WeightFormats.Suffix(type));
        IntPtr pw = up.Pointer, px = x.Pointer, ps = scores.Pointer, pa = active.Pointer, ph = h.Pointer;
        void** args = stackalloc void*[11];
        args[0] = &pw;
        args[1] = &rowBytes;
        args[2] = &px;
        args[3] = &cols;
        args[4] = &n;
        args[5] = &ps;
        args[6] = &blocks;
        args[7] = &pa;
        args[8] = &activeCount;
        args[9] = &size;
        args[10] = &ph;
        device.Launch(fn, (checked((int)(((long)activeCount * size + Warps - 1) / Warps)), 1, 1), (Warps * 32, 1, 1), 0, args);
    }

    /// <summary>
    /// chunk_sparse_down_&lt;type&gt;: y [n, dim] = Σ over the active blocks (ascending) of down_e · h[i, c].
    /// down: [blocks·dim, size] of <paramref name="type"/>; with no active block, y is zeroed.
    /// </summary>
    public static unsafe void Down(GpuDevice device, GgmlType type, DeviceSpan<byte> down, int blocks, int dim, int size, DeviceSpan<float> h, int n,
        DeviceSpan<int> active, int activeCount, DeviceSpan<float> y)
    {
        long rowBytes = WeightFormats.CheckMatrix("chunk_sparse_down", type, blocks * dim, size, down.Length);
        if (n < 1 || activeCount < 0 || activeCount > blocks || h.Length < (long)activeCount * n * size || y.Length < (long)n * dim
            || active.Length < activeCount)
            throw new ArgumentException($"chunk_sparse_down: {n} rows, {activeCount} of {blocks} blocks of {size}; h {h.Length}, y {y.Length}");
        var fn = device.Function(File, "chunk_sparse_down_" + WeightFormats.Suffix(type));
        IntPtr pw = down.Pointer, ph = h.Pointer, pa = active.Pointer, py = y.Pointer;
        void** args = stackalloc void*[9];
        args[0] = &pw;
        args[1] = &rowBytes;
        args[2] = &ph;
        args[3] = &size;
        args[4] = &n;
        args[5] = &pa;
        args[6] = &activeCount;
        args[7] = &dim;
        args[8] = &py;
        device.Launch(fn, ((dim + Warps - 1) / Warps, 1, 1), (Warps * 32, 1, 1), 0, args);
    }
}
