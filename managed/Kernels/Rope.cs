namespace Engine.Cuda.Kernels;

/// <summary>
/// Typed launcher for kernels/rope.cu. CPU reference: <see cref="Backends.Cpu.Kernels.Rope"/> with
/// <see cref="Backends.RopeTable"/>'s angles.
/// </summary>
public static class Rope
{
    private const string File = "rope";

    /// <summary>
    /// rope_f32: rotates every head of x ([n, heads·headDim]) in place by its row's position; invFreq
    /// holds θᵢ for the rotated pairs (at most headDim/2); cos and sin are multiplied by <paramref name="mscale"/>
    /// (LongRoPE's attention factor).
    /// </summary>
    public static unsafe void RopeF32(GpuDevice device, DeviceSpan<float> x, int n, int heads, int headDim, DeviceSpan<int> positions,
        DeviceSpan<double> invFreq, int pairs, bool neox, double mscale = 1)
    {
        if (n <= 0 || heads <= 0 || headDim <= 0)
            throw new ArgumentOutOfRangeException(nameof(n), $"rope_f32: shape [{n}, {heads}·{headDim}] must be positive");
        if (pairs <= 0 || 2 * pairs > headDim || pairs > 1024)
            throw new ArgumentOutOfRangeException(nameof(pairs), $"rope_f32: {pairs} rotated pairs for a head of {headDim}");
        if (x.Length < (long)n * heads * headDim)
            throw new ArgumentException($"rope_f32: x has {x.Length} elements, [{n}, {heads}·{headDim}] needs {(long)n * heads * headDim}");
        if (positions.Length < n || invFreq.Length < pairs)
            throw new ArgumentException($"rope_f32: {positions.Length} positions for {n} rows, {invFreq.Length} frequencies for {pairs} pairs");
        if (heads > 65535)
            throw new ArgumentOutOfRangeException(nameof(heads), $"rope_f32: {heads} heads exceed the grid's 65535");
        var fn = device.Function(File, "rope_f32");
        IntPtr px = x.Pointer, pp = positions.Pointer, pf = invFreq.Pointer;
        int neoxFlag = neox ? 1 : 0;
        void** args = stackalloc void*[8];
        args[0] = &px;
        args[1] = &pp;
        args[2] = &pf;
        args[3] = &heads;
        args[4] = &headDim;
        args[5] = &pairs;
        args[6] = &neoxFlag;
        args[7] = &mscale;
        device.Launch(fn, (n, heads, 1), ((pairs + 31) / 32 * 32, 1, 1), 0, args);
    }
}
