using System.Runtime.InteropServices;
using Engine.Tensors;

namespace Engine.Cuda.Kernels;

/// <summary>One matrix of a fused GEMV launch: y = x·Wᵀ (+ bias). w: [rows, cols]; y: [ncols, rows]; bias: [rows] or empty.</summary>
public readonly record struct GemvTarget(DeviceSpan<byte> W, int Rows, DeviceSpan<float> Y, DeviceSpan<float> Bias = default);

/// <summary>The RMSNorm folded into a GEMV's epilogue: output = rmsnorm(y)·Weight once y is complete.</summary>
/// <param name="Counter">One zeroed unsigned int the launch counts its finished blocks in (left zero).</param>
public readonly record struct GemvNorm(DeviceSpan<float> Weight, float Eps, DeviceSpan<float> Output, DeviceSpan<uint> Counter);

/// <summary>
/// Typed launcher for kernels/gemv.cu. CPU reference: <see cref="Backends.Cpu.Kernels.Gemv"/>; the fused
/// forms are the compositions <see cref="Backends.Backend.MatMulAddNorm"/> and <see cref="Backends.Backend.GatedFfn"/>
/// spell out, and give the same bits as the separate kernels.
/// </summary>
public static class Gemv
{
    private const string File = "gemv";

    /// <summary>Most activation rows one launch multiplies (the _x8 kernels).</summary>
    public const int MaxColumns = 8;

    /// <summary>Most matrices one launch multiplies by the same input (GEMV_MAX_TARGETS).</summary>
    public const int MaxTargets = 3;

    /// <summary>
    /// gemv_&lt;type&gt; (one activation row) or gemv_&lt;type&gt;_x8 (2..8 rows): y[c, r] = Σ_k W[r, k]·x[c, k].
    /// w: [rows, cols] of <paramref name="type"/>; x: [ncols, cols]; y: [ncols, rows]. Each activation row's
    /// result is computed with the same arithmetic in both kernels (same lane split, same order of fused
    /// multiply-adds), so it does not depend on how many rows share the launch.
    /// </summary>
    public static void Run(GpuDevice device, GgmlType type, DeviceSpan<byte> w, int rows, int cols, DeviceSpan<float> x, int ncols,
        DeviceSpan<float> y) =>
        Run(device, type, cols, [new GemvTarget(w, rows, y)], x, ncols);

    /// <summary>
    /// The products of up to three matrices of one type and width with the same input in one launch (q, k
    /// and v), each plus its bias; with <paramref name="accumulate"/>, y += <paramref name="accumulateScale"/>·x·Wᵀ (a residual add); with
    /// <paramref name="norm"/> (one target, accumulating), the RMSNorm of the finished y as well.
    /// </summary>
    public static unsafe void Run(GpuDevice device, GgmlType type, int cols, ReadOnlySpan<GemvTarget> targets, DeviceSpan<float> x, int ncols,
        bool accumulate = false, GemvNorm? norm = null, float accumulateScale = 1f)
    {
        if (targets.Length < 1 || targets.Length > MaxTargets)
            throw new ArgumentOutOfRangeException(nameof(targets), $"gemv: {targets.Length} matrices; one launch takes 1..{MaxTargets}");
        if (ncols < 1 || ncols > MaxColumns)
            throw new ArgumentOutOfRangeException(nameof(ncols), $"gemv: {ncols} activation rows; one launch takes 1..{MaxColumns}");
        if (x.Length < (long)ncols * cols)
            throw new ArgumentException($"gemv: x has {x.Length} elements, [{ncols}, {cols}] needs {(long)ncols * cols}");
        CheckAligned("gemv", type, x);
        var t = new Targets { Count = targets.Length };
        long totalRows = 0;
        for (int i = 0; i < targets.Length; i++)
        {
            var g = targets[i];
            long rowBytes = WeightFormats.CheckMatrix("gemv", type, g.Rows, cols, g.W.Length);
            if (g.Y.Length < (long)ncols * g.Rows)
                throw new ArgumentException($"gemv: y has {g.Y.Length} elements, [{ncols}, {g.Rows}] needs {(long)ncols * g.Rows}");
            if (!g.Bias.IsEmpty && g.Bias.Length < g.Rows)
                throw new ArgumentException($"gemv: a bias of {g.Bias.Length} values for {g.Rows} rows");
            t.RowBytes = rowBytes;
            t.Set(i, g.W.Pointer, g.Bias.IsEmpty ? IntPtr.Zero : g.Bias.Pointer, g.Y.Pointer, g.Rows);
            totalRows += g.Rows;
        }
        var e = new Epilogue { Accumulate = accumulate ? 1 : 0, Scale = accumulateScale };
        if (norm is { } nm)
        {
            if (targets.Length != 1 || !accumulate)
                throw new ArgumentException("gemv: the folded RMSNorm follows one accumulating product (the residual add)");
            int dim = targets[0].Rows;
            if (nm.Weight.Length < dim || nm.Output.Length < (long)ncols * dim || nm.Counter.Length < 1)
                throw new ArgumentException($"gemv: the folded norm needs a weight of {dim}, an output of {(long)ncols * dim} and a counter");
            if (!(nm.Eps >= 0))
                throw new ArgumentOutOfRangeException(nameof(norm), $"gemv: eps {nm.Eps} must not be negative");
            e.NormW = nm.Weight.Pointer;
            e.NormOut = nm.Output.Pointer;
            e.Eps = nm.Eps;
            e.Counter = nm.Counter.Pointer;
        }
        long blocks = (totalRows + 3) / 4;
        if (blocks > int.MaxValue)
            throw new ArgumentOutOfRangeException(nameof(targets), $"gemv: {totalRows} rows exceed the grid");
        string name = "gemv_" + WeightFormats.Suffix(type) + (ncols == 1 ? "" : "_x8");
        var fn = device.Function(File, name);
        IntPtr px = x.Pointer;
        void** args = stackalloc void*[5];
        args[0] = &t;
        args[1] = &px;
        args[2] = &cols;
        args[3] = &ncols;
        args[4] = &e;
        device.Launch(fn, ((int)blocks, 1, 1), (128, 1, 1), 0, args);
    }

    /// <summary>
    /// gemv_&lt;type&gt;_glu: y[c, r] = silu(gate_r·x_c)·(up_r·x_c) — the gate and up projections and SwiGLU in
    /// one launch. gate, up: [rows, cols] of <paramref name="type"/>; x: [ncols, cols]; y: [ncols, rows].
    /// </summary>
    public static unsafe void Glu(GpuDevice device, GgmlType type, DeviceSpan<byte> gate, DeviceSpan<byte> up, int rows, int cols,
        DeviceSpan<float> x, int ncols, DeviceSpan<float> y)
    {
        long rowBytes = WeightFormats.CheckMatrix("gemv_glu", type, rows, cols, gate.Length);
        WeightFormats.CheckMatrix("gemv_glu", type, rows, cols, up.Length);
        if (ncols < 1 || ncols > MaxColumns)
            throw new ArgumentOutOfRangeException(nameof(ncols), $"gemv_glu: {ncols} activation rows; one launch takes 1..{MaxColumns}");
        if (x.Length < (long)ncols * cols || y.Length < (long)ncols * rows)
            throw new ArgumentException($"gemv_glu: x has {x.Length} and y {y.Length} elements, [{ncols}, {cols}] → [{ncols}, {rows}]");
        CheckAligned("gemv_glu", type, x);
        var fn = device.Function(File, "gemv_" + WeightFormats.Suffix(type) + (ncols == 1 ? "_glu" : "_glu_x8"));
        IntPtr pg = gate.Pointer, pu = up.Pointer, px = x.Pointer, py = y.Pointer;
        void** args = stackalloc void*[8];
        args[0] = &pg;
        args[1] = &pu;
        args[2] = &rowBytes;
        args[3] = &px;
        args[4] = &py;
        args[5] = &rows;
        args[6] = &cols;
        args[7] = &ncols;
        device.Launch(fn, ((rows + 3) / 4, 1, 1), (128, 1, 1), 0, args);
    }

    /// <summary>The kernels read a chunk's activations as float4 (quant.cuh's load_x): rows must start 16-byte aligned.</summary>
    private static void CheckAligned(string kernel, GgmlType type, DeviceSpan<float> x)
    {
        if (type != GgmlType.F32 && (x.Pointer & 15) != 0)
            throw new ArgumentException($"{kernel}: the activations at 0x{x.Pointer:x} are not 16-byte aligned ({type} rows are read as float4)");
    }

    /// <summary>gemv_targets of gemv.cu, field for field.</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct Targets
    {
        public IntPtr W0, W1, W2, Bias0, Bias1, Bias2, Y0, Y1, Y2;
        public int Rows0, Rows1, Rows2, Count;
        public long RowBytes;

        public void Set(int i, IntPtr w, IntPtr bias, IntPtr y, int rows)
        {
            switch (i)
            {
                case 0: (W0, Bias0, Y0, Rows0) = (w, bias, y, rows); break;
                case 1: (W1, Bias1, Y1, Rows1) = (w, bias, y, rows); break;
                default: (W2, Bias2, Y2, Rows2) = (w, bias, y, rows); break;
            }
        }
    }

    /// <summary>gemv_epilogue of gemv.cu, field for field.</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct Epilogue
    {
        public int Accumulate;
        public float Scale;
        public IntPtr NormW, NormOut;
        public float Eps;
        public IntPtr Counter;
    }
}
