using Engine.Tensors;

namespace Engine.Cuda.Kernels;

/// <summary>
/// Typed launchers for kernels/moe.cu. CPU reference: <see cref="Backends.Cpu.Kernels.Activations.MoeCombineF32"/>;
/// the device-routed path computes what <c>LlamaModel.MoeFfn</c> computes with host routing.
/// </summary>
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

    /// <summary>moe_route_f32: each of <paramref name="n"/> rows' top-<paramref name="k"/> experts (rank order) and their weights.</summary>
    public static unsafe void Route(GpuDevice device, DeviceSpan<float> logits, int n, int experts, int k, bool normalize, DeviceSpan<int> chosen,
        DeviceSpan<float> weights)
    {
        if (n <= 0 || k <= 0 || k > experts || logits.Length < (long)n * experts || chosen.Length < (long)n * k || weights.Length < (long)n * k)
            throw new ArgumentException($"moe_route_f32: {n} rows, top-{k} of {experts}; logits {logits.Length}, chosen {chosen.Length}, weights {weights.Length}");
        var fn = device.Function(File, "moe_route_f32");
        IntPtr pl = logits.Pointer, pc = chosen.Pointer, pw = weights.Pointer;
        int norm = normalize ? 1 : 0;
        void** args = stackalloc void*[6];
        args[0] = &pl;
        args[1] = &experts;
        args[2] = &k;
        args[3] = &norm;
        args[4] = &pc;
        args[5] = &pw;
        device.Launch(fn, (n, 1, 1), (128, 1, 1), 0, args);
    }

    /// <summary>gemv_&lt;type&gt;_moe_glu: h [n·k, rows] = silu(gate_e·x[t])·(up_e·x[t]) for every chosen (t, e); gate and up are stacks [experts·rows, cols].</summary>
    public static unsafe void Glu(GpuDevice device, GgmlType type, DeviceSpan<byte> gate, DeviceSpan<byte> up, int experts, int rows, int cols,
        DeviceSpan<float> x, int n, DeviceSpan<int> chosen, int k, DeviceSpan<float> h)
    {
        long rowBytes = WeightFormats.CheckMatrix("moe_glu", type, experts * rows, cols, Math.Min(gate.Length, up.Length));
        if (n <= 0 || k <= 0 || x.Length < (long)n * cols || chosen.Length < (long)n * k || h.Length < (long)n * k * rows)
            throw new ArgumentException($"moe_glu: {n} rows × {k} experts; x {x.Length}, chosen {chosen.Length}, h {h.Length}");
        var fn = device.Function(File, "gemv_" + WeightFormats.Suffix(type) + "_moe_glu");
        IntPtr pg = gate.Pointer, pu = up.Pointer, px = x.Pointer, pc = chosen.Pointer, ph = h.Pointer;
        long expertBytes = rowBytes * rows;
        void** args = stackalloc void*[10];
        args[0] = &pg;
        args[1] = &pu;
        args[2] = &expertBytes;
        args[3] = &rowBytes;
        args[4] = &px;
        args[5] = &cols;
        args[6] = &pc;
        args[7] = &k;
        args[8] = &ph;
        args[9] = &rows;
        device.Launch(fn, ((rows + 3) / 4, checked(n * k), 1), (128, 1, 1), 0, args);
    }

    /// <summary>gemv_&lt;type&gt;_moe_down: y [n, dim] = Σ_j weights[t, j]·(down_e·h[t·k + j]); down is a stack [experts·dim, ffn].</summary>
    public static unsafe void Down(GpuDevice device, GgmlType type, DeviceSpan<byte> down, int experts, int dim, int ffn, DeviceSpan<float> h, int n,
        DeviceSpan<int> chosen, DeviceSpan<float> weights, int k, DeviceSpan<float> y)
    {
        long rowBytes = WeightFormats.CheckMatrix("moe_down", type, experts * dim, ffn, down.Length);
        if (n <= 0 || k <= 0 || h.Length < (long)n * k * ffn || chosen.Length < (long)n * k || weights.Length < (long)n * k || y.Length < (long)n * dim)
            throw new ArgumentException($"moe_down: {n} rows × {k} experts; h {h.Length}, y {y.Length}");
        var fn = device.Function(File, "gemv_" + WeightFormats.Suffix(type) + "_moe_down");
        IntPtr pd = down.Pointer, ph = h.Pointer, pc = chosen.Pointer, pw = weights.Pointer, py = y.Pointer;
        long expertBytes = rowBytes * dim;
        void** args = stackalloc void*[10];
        args[0] = &pd;
        args[1] = &expertBytes;
        args[2] = &rowBytes;
        args[3] = &ph;
        args[4] = &ffn;
        args[5] = &pc;
        args[6] = &pw;
        args[7] = &k;
        args[8] = &py;
        args[9] = &dim;
        device.Launch(fn, ((dim + 3) / 4, n, 1), (128, 1, 1), 0, args);
    }

    /// <summary>moe_add_gated_f32: y [n, cols] += sigmoid(gate[t])·s[t] (Qwen2-MoE's shared expert).</summary>
    public static unsafe void AddGated(GpuDevice device, DeviceSpan<float> y, DeviceSpan<float> s, DeviceSpan<float> gate, int n, int cols)
    {
        if (n <= 0 || cols <= 0 || y.Length < (long)n * cols || s.Length < (long)n * cols || gate.Length < n)
            throw new ArgumentException($"moe_add_gated_f32: [{n}, {cols}]; y {y.Length}, s {s.Length}, gate {gate.Length}");
        var fn = device.Function(File, "moe_add_gated_f32");
        IntPtr py = y.Pointer, ps = s.Pointer, pg = gate.Pointer;
        void** args = stackalloc void*[4];
        args[0] = &py;
        args[1] = &ps;
        args[2] = &pg;
        args[3] = &cols;
        device.Launch(fn, (n, 1, 1), (256, 1, 1), 0, args);
    }
}
