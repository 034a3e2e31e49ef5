using Engine.Tensors;

namespace Engine.Cuda.Kernels;

/// <summary>
/// Typed launchers for kernels/dequantize.cu. CPU reference: <see cref="Backends.Cpu.Kernels.DequantizeF16"/>.
/// </summary>
public static class Dequantize
{
    private const string File = "dequantize";

    /// <summary>dequantize_&lt;type&gt;_f16: dst = W as F16. w: [rows, cols] of <paramref name="type"/>; dst: [rows, cols] halves.</summary>
    public static unsafe void ToF16(GpuDevice device, GgmlType type, DeviceSpan<byte> w, int rows, int cols, DeviceSpan<Half> dst)
    {
        long rowBytes = WeightFormats.CheckMatrix("dequantize_f16", type, rows, cols, w.Length);
        if (dst.Length < (long)rows * cols)
            throw new ArgumentException($"dequantize_f16: dst has {dst.Length} elements, [{rows}, {cols}] needs {(long)rows * cols}");
        var fn = device.Function(File, "dequantize_" + WeightFormats.Suffix(type) + "_f16");
        IntPtr pw = w.Pointer, pd = dst.Pointer;
        void** args = stackalloc void*[4];
        args[0] = &pw;
        args[1] = &rowBytes;
        args[2] = &pd;
        args[3] = &cols;
        device.Launch(fn, (rows, 1, 1), (128, 1, 1), 0, args);
    }

    /// <summary>convert_f32_f16: dst[i] = (Half)x[i] (round to nearest even) for i &lt; count.</summary>
    public static unsafe void ConvertF32F16(GpuDevice device, DeviceSpan<float> x, DeviceSpan<Half> dst, long count)
    {
        if (count <= 0 || x.Length < count || dst.Length < count)
            throw new ArgumentException($"convert_f32_f16: {count} elements from {x.Length} into {dst.Length}");
        var fn = device.Function(File, "convert_f32_f16");
        IntPtr px = x.Pointer, pd = dst.Pointer;
        void** args = stackalloc void*[3];
        args[0] = &px;
        args[1] = &pd;
        args[2] = &count;
        device.Launch(fn, (checked((int)((count + 255) / 256)), 1, 1), (256, 1, 1), 0, args);
    }
}
