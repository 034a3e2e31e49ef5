namespace Engine.Cuda.Kernels;

/// <summary>
/// Typed launchers for kernels/rmsnorm.cu. CPU reference: <see cref="Backends.Cpu.Kernels.RmsNorm"/>.
/// </summary>
public static class RmsNorm
{
    private const string File = "rmsnorm";

    /// <summary>Threads per row (RMS_NORM_THREADS): the order of the sum of squares, which gemv's folded norm repeats.</summary>
    public const int Threads = 128;

    /// <summary>
    /// rms_norm_f32: y[r, :] = x[r, :] / sqrt(mean(x[r, :]²) + eps) · w for r &lt; rows.
    /// x, y: [rows, cols] (y may be x); w: [cols]. One block per row.
    /// </summary>
    public static unsafe void RmsNormF32(GpuDevice device, DeviceSpan<float> x, DeviceSpan<float> w, DeviceSpan<float> y, int rows, int cols, float eps)
    {
        if (rows <= 0 || cols <= 0)
            throw new ArgumentOutOfRangeException(nameof(rows), $"rms_norm_f32: shape [{rows}, {cols}] must be positive");
        long size = (long)rows * cols;
        if (x.Length < size || y.Length < size)
            throw new ArgumentException($"rms_norm_f32: x has {x.Length} and y {y.Length} elements, [{rows}, {cols}] needs {size}");
        if (w.Length < cols)
            throw new ArgumentException($"rms_norm_f32: w has {w.Length} elements, needs {cols}");
        if (!(eps >= 0))
            throw new ArgumentOutOfRangeException(nameof(eps), $"rms_norm_f32: eps {eps} must not be negative");
        var fn = device.Function(File, "rms_norm_f32");
        IntPtr px = x.Pointer, pw = w.Pointer, py = y.Pointer;
        void** args = stackalloc void*[5];
        args[0] = &px;
        args[1] = &pw;
        args[2] = &py;
        args[3] = &cols;
        args[4] = &eps;
        device.Launch(fn, (rows, 1, 1), (Threads, 1, 1), 0, args);
    }
}
