namespace Engine.Cuda.Kernels;

/// <summary>
/// Typed launchers for kernels/swiglu.cu. CPU references: <see cref="Backends.Cpu.Kernels.Activations.SwiGluF32"/>
/// and <see cref="Backends.Cpu.Kernels.Activations.GeGluF32"/>.
/// </summary>
public static class SwiGlu
{
    /// <summary>swiglu_f32: dst = silu(gate) ⊙ up over <paramref name="count"/> elements (dst may alias gate or up).</summary>
    public static void SwiGluF32(GpuDevice device, DeviceSpan<float> gate, DeviceSpan<float> up, DeviceSpan<float> dst, long count) =>
        Launch(device, "swiglu_f32", gate, up, dst, count);

    /// <summary>geglu_f32: dst = gelu_tanh(gate) ⊙ up over <paramref name="count"/> elements (dst may alias gate or up).</summary>
    public static void GeGluF32(GpuDevice device, DeviceSpan<float> gate, DeviceSpan<float> up, DeviceSpan<float> dst, long count) =>
        Launch(device, "geglu_f32", gate, up, dst, count);

    private static unsafe void Launch(GpuDevice device, string kernel, DeviceSpan<float> gate, DeviceSpan<float> up, DeviceSpan<float> dst, long count)
    {
        if (count <= 0 || gate.Length < count || up.Length < count || dst.Length < count)
            throw new ArgumentException($"{kernel}: {count} elements; gate {gate.Length}, up {up.Length}, dst {dst.Length}");
        var fn = device.Function("swiglu", kernel);
        IntPtr pg = gate.Pointer, pu = up.Pointer, pd = dst.Pointer;
        void** args = stackalloc void*[4];
        args[0] = &pg;
        args[1] = &pu;
        args[2] = &pd;
        args[3] = &count;
        device.Launch(fn, (checked((int)((count + 255) / 256)), 1, 1), (256, 1, 1), 0, args);
    }
}
