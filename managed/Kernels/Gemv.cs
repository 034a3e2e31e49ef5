using Engine.Tensors;

namespace Engine.Cuda.Kernels;

/// <summary>
/// Typed launcher for kernels/gemv.cu. CPU reference: <see cref="Backends.Cpu.Kernels.Gemv"/>.
/// </summary>
public static class Gemv
{
    private const string File = "gemv";

    /// <summary>Most activation rows one launch multiplies (the _x8 kernels).</summary>
    public const int MaxColumns = 8;

    /// <summary>
    /// gemv_&lt;type&gt; (one activation row) or gemv_&lt;type&gt;_x8 (2..8 rows): y[c, r] = Σ_k W[r, k]·x[c, k].
    /// w: [rows, cols] of <paramref name="type"/>; x: [ncols, cols]; y: [ncols, rows]. Each activation row's
    /// result is computed with the same arithmetic in both kernels (same lane split, same order of fused
    /// multiply-adds), so it does not depend on how many rows share the launch.
    /// </summary>
    public static unsafe void Run(GpuDevice device, GgmlType type, DeviceSpan<byte> w, int rows, int cols, DeviceSpan<float> x, int ncols,
        DeviceSpan<float> y)
    {
        long rowBytes = WeightFormats.CheckMatrix("gemv", type, rows, cols, w.Length);
        if (ncols < 1 || ncols > MaxColumns)
            throw new ArgumentOutOfRangeException(nameof(ncols), $"gemv: {ncols} activation rows; one launch takes 1..{MaxColumns}");
        if (x.Length < (long)ncols * cols)
            throw new ArgumentException($"gemv: x has {x.Length} elements, [{ncols}, {cols}] needs {(long)ncols * cols}");
        if (y.Length < (long)ncols * rows)
            throw new ArgumentException($"gemv: y has {y.Length} elements, [{ncols}, {rows}] needs {(long)ncols * rows}");
        string name = "gemv_" + WeightFormats.Suffix(type) + (ncols == 1 ? "" : "_x8");
        var fn = device.Function(File, name);
        IntPtr pw = w.Pointer, px = x.Pointer, py = y.Pointer;
        void** args = stackalloc void*[7];
        args[0] = &pw;
        args[1] = &rowBytes;
        args[2] = &px;
        args[3] = &py;
        args[4] = &rows;
        args[5] = &cols;
        args[6] = &ncols;
        device.Launch(fn, ((rows + 3) / 4, 1, 1), (128, 1, 1), 0, args);
    }
}
