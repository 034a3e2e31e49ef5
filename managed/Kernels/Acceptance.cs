using Engine.Speculative;

namespace Engine.Cuda.Kernels;

/// <summary>
/// Typed launcher for kernels/acceptance.cu. CPU reference: <see cref="AcceptanceKernels.AcceptGreedy"/>
/// and <see cref="AcceptanceKernels.AcceptSampled"/>. Both write out = [L, next, path₀ … path_{L−1}].
/// </summary>
public static class Acceptance
{
    private const string File = "acceptance";

    /// <summary>Ints the output needs for a tree of <paramref name="n"/> nodes.</summary>
    public static int OutputInts(int n) => n + 2;

    /// <summary>accept_greedy over a tree of n nodes with the target's argmax per row (n + 1 rows).</summary>
    public static unsafe void AcceptGreedy(GpuDevice device, DeviceSpan<int> parent, DeviceSpan<int> token, int n, DeviceSpan<int> argmax,
        DeviceSpan<int> output)
    {
        if (n < 0 || parent.Length < n || token.Length < n || argmax.Length < n + 1 || output.Length < OutputInts(n))
            throw new ArgumentException($"accept_greedy: {n} nodes with parent {parent.Length}, token {token.Length}, argmax {argmax.Length}, out {output.Length}");
        var fn = device.Function(File, "accept_greedy");
        IntPtr pp = parent.Pointer, pt = token.Pointer, pa = argmax.Pointer, po = output.Pointer;
        void** args = stackalloc void*[5];
        args[0] = &pp;
        args[1] = &pt;
        args[2] = &n;
        args[3] = &pa;
        args[4] = &po;
        device.Launch(fn, (1, 1, 1), (32, 1, 1), 0, args);
    }

    /// <summary>accept_sampled: recursive rejection sampling over a tree of n nodes (arguments as the kernel's; stats from sample_f32).</summary>
    public static unsafe void AcceptSampled(GpuDevice device, DeviceSpan<float> logits, DeviceSpan<float> stats, float invTemp, DeviceSpan<int> sampled,
        DeviceSpan<float> q, DeviceSpan<int> qrow, DeviceSpan<int> draw, DeviceSpan<int> parent, DeviceSpan<int> token, int n, int vocab, ulong seed,
        ulong offset, DeviceSpan<float> residual, DeviceSpan<int> output)
    {
        if (n < 0 || vocab <= 0 || logits.Length < (long)(n + 1) * vocab || stats.Length < 3L * (n + 1) || sampled.Length < n + 1 || qrow.Length < n + 1
            || draw.Length < n + 1 || parent.Length < n || token.Length < n || residual.Length < vocab || output.Length < OutputInts(n))
            throw new ArgumentException($"accept_sampled: {n} nodes over a vocabulary of {vocab}: logits {logits.Length}, stats {stats.Length}, residual {residual.Length}, out {output.Length}");
        if (!(invTemp > 0) || !float.IsFinite(invTemp))
            throw new ArgumentOutOfRangeException(nameof(invTemp), $"accept_sampled: 1/T = {invTemp} must be a positive number");
        var fn = device.Function(File, "accept_sampled");
        IntPtr pl = logits.Pointer, pst = stats.Pointer, ps = sampled.Pointer, pq = q.IsEmpty ? IntPtr.Zero : q.Pointer, pqr = qrow.Pointer,
            pd = draw.Pointer, ppa = parent.Pointer, pt = token.Pointer, pr = residual.Pointer, po = output.Pointer;
        void** args = stackalloc void*[15];
        args[0] = &pl;
        args[1] = &pst;
        args[2] = &invTemp;
        args[3] = &ps;
        args[4] = &pq;
        args[5] = &pqr;
        args[6] = &pd;
        args[7] = &ppa;
        args[8] = &pt;
        args[9] = &n;
        args[10] = &vocab;
        args[11] = &seed;
        args[12] = &offset;
        args[13] = &pr;
        args[14] = &po;
        device.Launch(fn, (1, 1, 1), (AcceptanceKernels.Threads, 1, 1), 0, args);
    }
}
