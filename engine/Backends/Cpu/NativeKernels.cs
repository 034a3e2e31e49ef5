using System.Runtime.InteropServices;

namespace Engine.Backends.Cpu;

/// <summary>
/// The native CPU kernels of <c>kernels/cpu</c> (<c>libengine_cpu.so</c>, built by CMakeLists.txt and
/// copied beside the program), used where the C# kernels cannot reach the speed: .NET 10 exposes no
/// AVX-512 VNNI. Each native kernel computes exactly what its C# counterpart computes (the same float
/// operations in the same order), so switching changes speed only. Absent library, a CPU without the
/// instructions, another ABI version, or <c>ENGINE_NATIVE=0</c> in the environment: the C# kernels run.
/// </summary>
internal static unsafe partial class NativeKernels
{
    private const string Library = "engine_cpu";
    private const int Abi = 9;

    /// <summary>Why the native kernels are or are not used (for logs and tests).</summary>
    public static string Status { get; private set; } = "";

    /// <summary>Whether the native kernels load and run on this CPU (decided once).</summary>
    public static bool Available { get; } = Probe(out string reason) | Record(reason);

    private static bool Record(string reason)
    {
        Status = reason;
        return false;
    }

    private static bool Probe(out string reason)
    {
        if (Environment.GetEnvironmentVariable("ENGINE_NATIVE") == "0")
        {
            reason = "disabled by ENGINE_NATIVE=0";
            return false;
        }
        try
        {
            int abi = engine_cpu_abi();
            if (abi != Abi)
            {
                reason = $"{Library} has ABI {abi}, this engine expects {Abi}; rebuild the kernels";
                return false;
            }
            if (engine_cpu_supported() == 0)
            {
                reason = "this CPU lacks AVX-512 VNNI (or F16C)";
                return false;
            }
            reason = "AVX-512 VNNI kernels from " + Library;
            return true;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or BadImageFormatException)
        {
            reason = $"{Library} not found beside the program (build it with build.ps1 build): {e.Message.Split('\n')[0]}";
            return false;
        }
    }

    [LibraryImport(Library)]
    private static partial int engine_cpu_abi();

    [LibraryImport(Library)]
    private static partial int engine_cpu_supported();

    /// <summary>
    /// <see cref="Kernels.Gemm.Codes32x4x2{T}"/> for 8 weight rows, writing y[r·ldy + i] for the 16
    /// activation rows r of groups g and g+1 and weight rows i.
    /// </summary>
    [LibraryImport(Library)]
    [UnmanagedCallConv(CallConvs = [typeof(System.Runtime.CompilerServices.CallConvSuppressGCTransition)])]
    public static partial void engine_codes32_8x16(byte* codes, long codeStride, float* scales, float* biases, long scaleStride, int blocks,
        sbyte* xq0, sbyte* xq1, float* xd0, float* xd1, float* xs0, float* xs1, float* y, long ldy);

    /// <summary><see cref="Kernels.Gemm.Codes16x4x2{T}"/> for 8 weight rows (sub-blocks of 16), output as <see cref="engine_codes32_8x16"/>.</summary>
    [LibraryImport(Library)]
    [UnmanagedCallConv(CallConvs = [typeof(System.Runtime.CompilerServices.CallConvSuppressGCTransition)])]
    public static partial void engine_codes16_8x16(byte* codes, long codeStride, float* scales, float* biases, long scaleStride, int blocks,
        sbyte* xq0, sbyte* xq1, float* xd0, float* xd1, float* xs0, float* xs1, float* y, long ldy);

    /// <summary>
    /// <see cref="engine_codes32_8x16"/> on <c>rows</c> weight rows (a multiple of 8) of GGML type <paramref name="type"/> read
    /// as the file holds them (row i at w + i·rowBytes, <paramref name="blocks"/> blocks a row: of 32 for Q4_0 and Q8_0,
    /// super-blocks of 256 for Q4_K, Q5_K and Q6_K; <paramref name="xi0"/>/<paramref name="xi1"/> the integer sums per 32,
    /// <see cref="Kernels.QuantizedActivations.InterleavedSums32"/>, or per 16 for Q6_K) instead of rows <see cref="Kernels.DecodedRows"/>
    /// decoded: for Q4_K and Q5_K the same output bit for bit; Q4_0, Q8_0 and Q6_K take the offset out of each block's integer
    /// dot product (<see cref="Kernels.MatMul.ExactOffsetReference"/>). Returns -1
    /// for a type it has no kernel for.
    /// </summary>
    [LibraryImport(Library)]
    [UnmanagedCallConv(CallConvs = [typeof(System.Runtime.CompilerServices.CallConvSuppressGCTransition)])]
    public static partial int engine_direct_rows(int type, byte* w, long rowBytes, int rows, int blocks,
        sbyte* xq0, sbyte* xq1, float* xd0, float* xd1, float* xs0, float* xs1, int* xi0, int* xi1, float* y, long ldy);

    /// <summary>
    /// Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K or Q6_K rows (type 2, 3, 6, 7, 8, 12, 13 or 14; a multiple of 16, row i at w + i·rowBytes, <paramref name="blocks"/> blocks a row)
    /// repacked into <see cref="Repacked16"/>'s layout at <paramref name="dst"/>. Returns -1 (nothing written) for another type.
    /// </summary>
    [LibraryImport(Library)]
    public static partial int engine_x16_pack(int type, byte* w, long rowBytes, int rows, int blocks, byte* dst);

    /// <summary>
    /// Groups [0, groups) of 16 weight rows in <see cref="Repacked16"/>'s layout against activation groups g and g+1
    /// (as <see cref="engine_direct_rows"/> takes them; Q4_1, Q5_0, Q5_1, Q4_K and Q5_K read the scaled sums xs, Q4_0 and Q8_0 the integer sums xi, Q6_K's per 16):
    /// y[r·ldy + 16·group + i], bit for bit the direct kernel's (Q4_1, Q5_0, Q5_1: the decoded rows' scale-and-bias arithmetic).
    /// </summary>
    [LibraryImport(Library)]
    [UnmanagedCallConv(CallConvs = [typeof(System.Runtime.CompilerServices.CallConvSuppressGCTransition)])]
    public static partial int engine_x16_rows(int type, byte* rp, int groups, int blocks, sbyte* xq0, sbyte* xq1, float* xd0, float* xd1,
        int* xi0, int* xi1, float* xs0, float* xs1, float* y, long ldy);

    /// <summary>
    /// 1-4 activation rows in plain layout (row j: q[j], d[j], Q4_1, Q5_0, Q5_1, Q4_K and Q5_K also its scaled sums xs[j], Q6_K its integer sums per 16 s16[j]) against groups [0, groups) of <see cref="Repacked16"/>'s layout:
    /// y[j][16·group + i], each row computed on its own, bit for bit what <see cref="engine_x16_rows"/> gives it.
    /// Returns -1 (nothing written) for another type, more than 4096 blocks a row or n outside 1..4.
    /// </summary>
    [LibraryImport(Library)]
    [UnmanagedCallConv(CallConvs = [typeof(System.Runtime.CompilerServices.CallConvSuppressGCTransition)])]
    public static partial int engine_x16_few(int type, byte* rp, int groups, int blocks, int n, sbyte** q, float** d, float** xs, short** s16, float** y);

    /// <summary>Whether <see cref="Direct"/> takes a type.</summary>
    public static bool HasDirect(Tensors.GgmlType type) => type is Tensors.GgmlType.Q4_0 or Tensors.GgmlType.Q8_0 or Tensors.GgmlType.Q4_K or Tensors.GgmlType.Q5_K or Tensors.GgmlType.Q6_K;

    /// <summary>
    /// The kernel for <paramref name="type"/> that reads its blocks as they are: <paramref name="rows"/> weight
    /// rows (a multiple of 8) of <paramref name="cols"/> values against activation groups g and g+1 of <paramref name="qx"/>.
    /// </summary>
    public static void Direct(Tensors.GgmlType type, byte* w, long rowBytes, int rows, int cols, Kernels.QuantizedActivations qx, int g, float* y, long ldy)
    {
        sbyte* q0 = qx.InterleavedQ(g), q1 = qx.InterleavedQ(g + 1);
        float* d0 = qx.InterleavedD(g), d1 = qx.InterleavedD(g + 1);
        bool sixteen = type == Tensors.GgmlType.Q6_K; // its sub-blocks are of 16 values
        float* s0 = qx.InterleavedScaledSums32(g), s1 = qx.InterleavedScaledSums32(g + 1);
        if (!HasDirect(type))
            throw new NotSupportedException($"no direct native kernel for {type}");
        int blocks = cols / (type is Tensors.GgmlType.Q4_0 or Tensors.GgmlType.Q8_0 ? 32 : 256);
        int* i0 = sixteen ? qx.InterleavedSums16(g) : qx.InterleavedSums32(g);
        int* i1 = sixteen ? qx.InterleavedSums16(g + 1) : qx.InterleavedSums32(g + 1);
        if (engine_direct_rows((int)type, w, rowBytes, rows, blocks, q0, q1, d0, d1, s0, s1, i0, i1, y, ldy) != 0)
            throw new NotSupportedException($"{Library} has no direct kernel for {type}");
    }

    /// <summary>
    /// <see cref="Kernels.Gemm.F32Outer8x16"/> over weight rows [0, <paramref name="rows"/>) (a multiple of 8) of type
    /// <paramref name="type"/> (F32, F16 or BF16; <paramref name="cols"/> a multiple of 16) against <paramref name="panels"/>
    /// (1..<see cref="MaxFloatPanels"/>) transposed panels of 16 activation rows (<see cref="Kernels.FloatPanels.Transposed"/>,
    /// one after another): y[(16p + r)·ldy + o], bit for bit the C# kernel's; <paramref name="rowsAfter"/> rows of the matrix follow
    /// the range (prefetched as the range ends). Returns -1 (nothing written) for another type or shape.
    /// </summary>
    [LibraryImport(Library)]
    [UnmanagedCallConv(CallConvs = [typeof(System.Runtime.CompilerServices.CallConvSuppressGCTransition)])]
    public static partial int engine_float_outer(int type, byte* w, long rowBytes, int rows, int rowsAfter, int cols, float* xT, int panels, float* y, long ldy);

    /// <summary>Most panels one <see cref="engine_float_outer"/> call takes.</summary>
    public const int MaxFloatPanels = 32;
}
