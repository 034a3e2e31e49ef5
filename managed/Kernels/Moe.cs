namespace Engine.Cuda.Kernels;

/// <summary>Typed launcher for kernels/moe.cu. CPU reference: <see cref="Backends.Cpu.Kernels.Activations.MoeCombineF32"/>.</summary>
public static class Moe
{
    private const string File = "moe";

    /// <summary>moe_combine_f32: dst [rows, cols] = per row, the weighted sum of k rows of src.</summary>
    public static unsafe void CombineF32(GpuDevice device, DeviceSpan<float> dst, DeviceSpan<float> src, DeviceSpan<int> slots, DeviceSpan<float> weights,
        int k, int rows, int cols)
    {
        if (rows <= 0 || cols <= 0 || k <= 0 || dst.Length < (long)rows * cols || slots.Length < (long)rows * k || weights.Length < (long)rows * k)
            throw new ArgumentException($"moe_combine_f32: {rows} rows × {k} experts of {cols} columns; dst {dst.Length}, slots {slots.Length}, weights {weights.Length}");
        var fn = device.Function(File, "moe_combine_f32");
        IntPtr pd = dst.Pointer, ps = src.Pointer, pslots = slots.Pointer, pw = weights.Pointer;
        void** args = stackalloc void*[6];
        args[0] = &pd;
        args[1] = &ps;
        args[2] = &pslots;
        args[3] = &pw;
        args[4] = &k;
        args[5] = &cols;
        device.Launch(fn, (rows, 1, 1), (256, 1, 1), 0, args);
    }
}
