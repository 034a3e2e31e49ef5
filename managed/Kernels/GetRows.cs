using Engine.Tensors;

namespace Engine.Cuda.Kernels;

/// <summary>
/// Typed launcher for kernels/getrows.cu. CPU reference: <see cref="Backends.Cpu.Kernels.GetRows"/>.
/// </summary>
public static class GetRows
{
    private const string File = "getrows";

    /// <summary>
    /// get_rows_&lt;type&gt;: dst[i, :] = table[ids[i], :] as float32. table: [tableRows, cols] of
    /// <paramref name="type"/>; ids: [n] (each in 0..tableRows-1, which the caller checked on the host); dst: [n, cols].
    /// </summary>
    public static unsafe void Rows(GpuDevice device, GgmlType type, DeviceSpan<byte> table, int tableRows, int cols, DeviceSpan<int> ids, int n,
        DeviceSpan<float> dst)
    {
        long rowBytes = WeightFormats.CheckMatrix("get_rows", type, tableRows, cols, table.Length);
        if (n <= 0 || ids.Length < n)
            throw new ArgumentException($"get_rows: {n} rows asked for, ids hold {ids.Length}");
        if (dst.Length < (long)n * cols)
            throw new ArgumentException($"get_rows: dst has {dst.Length} elements, [{n}, {cols}] needs {(long)n * cols}");
        var fn = device.Function(File, "get_rows_" + WeightFormats.Suffix(type));
        IntPtr pt = table.Pointer, pi = ids.Pointer, pd = dst.Pointer;
        void** args = stackalloc void*[5];
        args[0] = &pt;
        args[1] = &rowBytes;
        args[2] = &pi;
        args[3] = &pd;
        args[4] = &cols;
        device.Launch(fn, (n, 1, 1), (128, 1, 1), 0, args);
    }
}
