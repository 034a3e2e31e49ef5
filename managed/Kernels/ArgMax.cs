namespace Engine.Cuda.Kernels;

/// <summary>
/// Typed launcher for kernels/argmax.cu. CPU reference: <see cref="Backends.Cpu.Kernels.Activations.ArgMaxF32"/>.
/// </summary>
public static class ArgMax
{
    /// <summary>argmax_f32: out[r] = the first index of row r's largest value. x: [rows, cols]; out: [rows].</summary>
    public static unsafe void ArgMaxF32(GpuDevice device, DeviceSpan<float> x, int rows, int cols, DeviceSpan<int> output)
    {
        if (rows <= 0 || cols <= 0 || x.Length < (long)rows * cols || output.Length < rows)
            throw new ArgumentException($"argmax_f32: x [{rows}, {cols}] in {x.Length} elements, out {output.Length}");
        var fn = device.Function("argmax", "argmax_f32");
        IntPtr px = x.Pointer, po = output.Pointer;
        void** args = stackalloc void*[3];
        args[0] = &px;
        args[1] = &po;
        args[2] = &cols;
        device.Launch(fn, (rows, 1, 1), (1024, 1, 1), 0, args);
    }
}
