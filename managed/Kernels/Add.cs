namespace Engine.Cuda.Kernels;

/// <summary>
/// Typed launchers for kernels/add.cu. CPU references: <see cref="Backends.Cpu.Kernels.Activations.AddF32"/>,
/// <see cref="Backends.Cpu.Kernels.Activations.AddBiasF32"/>, <see cref="Backends.Cpu.Kernels.Activations.ScaleF32"/>
/// and <see cref="Backends.Cpu.Kernels.Activations.SoftCapF32"/>.
/// </summary>
public static class Add
{
    private const string File = "add";

    /// <summary>add_f32: dst += src over <paramref name="count"/> elements.</summary>
    public static unsafe void AddF32(GpuDevice device, DeviceSpan<float> dst, DeviceSpan<float> src, long count)
    {
        if (count <= 0 || dst.Length < count || src.Length < count)
            throw new ArgumentException($"add_f32: {count} elements; dst {dst.Length}, src {src.Length}");
        var fn = device.Function(File, "add_f32");
        IntPtr pd = dst.Pointer, ps = src.Pointer;
        void** args = stackalloc void*[3];
        args[0] = &pd;
        args[1] = &ps;
        args[2] = &count;
        device.Launch(fn, (checked((int)((count + 255) / 256)), 1, 1), (256, 1, 1), 0, args);
    }

    /// <summary>scale_f32: x *= s over <paramref name="count"/> elements.</summary>
    public static unsafe void ScaleF32(GpuDevice device, DeviceSpan<float> x, float s, long count)
    {
        if (count <= 0 || x.Length < count)
            throw new ArgumentException($"scale_f32: {count} elements; x {x.Length}");
        var fn = device.Function(File, "scale_f32");
        IntPtr px = x.Pointer;
        void** args = stackalloc void*[3];
        args[0] = &px;
        args[1] = &s;
        args[2] = &count;
        device.Launch(fn, (checked((int)((count + 255) / 256)), 1, 1), (256, 1, 1), 0, args);
    }

    /// <summary>soft_cap_f32: x = cap · tanh(x / cap) over <paramref name="count"/> elements.</summary>
    public static unsafe void SoftCapF32(GpuDevice device, DeviceSpan<float> x, float cap, long count)
    {
        if (count <= 0 || x.Length < count)
            throw new ArgumentException($"soft_cap_f32: {count} elements; x {x.Length}");
        if (!(cap > 0) || !float.IsFinite(cap))
            throw new ArgumentOutOfRangeException(nameof(cap), $"soft_cap_f32: a cap of {cap} must be a positive number");
        var fn = device.Function(File, "soft_cap_f32");
        IntPtr px = x.Pointer;
        void** args = stackalloc void*[3];
        args[0] = &px;
        args[1] = &cap;
        args[2] = &count;
        device.Launch(fn, (checked((int)((count + 255) / 256)), 1, 1), (256, 1, 1), 0, args);
    }

    /// <summary>add_bias_f32: x[r, :] += bias for x [rows, cols].</summary>
    public static unsafe void AddBiasF32(GpuDevice device, DeviceSpan<float> x, DeviceSpan<float> bias, int rows, int cols)
    {
        long count = (long)rows * cols;
        if (rows <= 0 || cols <= 0 || x.Length < count || bias.Length < cols)
            throw new ArgumentException($"add_bias_f32: x [{rows}, {cols}] in {x.Length} elements, bias {bias.Length}");
        var fn = device.Function(File, "add_bias_f32");
        IntPtr px = x.Pointer, pb = bias.Pointer;
        void** args = stackalloc void*[4];
        args[0] = &px;
        args[1] = &pb;
        args[2] = &cols;
        args[3] = &count;
        device.Launch(fn, (checked((int)((count + 255) / 256)), 1, 1), (256, 1, 1), 0, args);
    }
}
