using System.Runtime.InteropServices;
using Engine.Tensors;

namespace Engine.Tests;

/// <summary>
/// kernels/quant.cuh — the block-format decoders of every CUDA weight kernel (get_rows, gemv,
/// dequantize) — compiled for the host (kernels/host/quant_host.cpp) and checked against the C#
/// dequantizer on blocks of random bits. This runs in CI without a GPU, so a misplaced nibble, scale
/// or value position in the CUDA source fails here before it ever reaches a device.
/// </summary>
public partial class QuantHostTests
{
    [LibraryImport("engine_quant_host")]
    private static unsafe partial int engine_quant_decode_row(int type, byte* row, int cols, float* output);

    private static void RequireLibrary()
    {
        try
        {
            unsafe { engine_quant_decode_row(0, null, 0, null); }
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            string message = $"engine_quant_host was not built (cmake with a C++ compiler): {e.Message.Split('\n')[0]}";
            if (SharedData.IsCi)
                Assert.Fail(message + " — required under CI");
            Assert.Ignore(message);
        }
    }

    public static IEnumerable<GgmlType> Types() => Cuda.Kernels.WeightFormats.Supported;

    [Test]
    public unsafe void Cuda_format_decoders_match_the_cpu_dequantizer([ValueSource(nameof(Types))] GgmlType type)
    {
        RequireLibrary();
        int qk = GgmlTypeInfo.Layout(type)!.Value.BlockSize;
        int cols = qk == 1 ? 48 : qk * 8;
        int rows = 40;
        var weights = GpuSuite.RandomWeights(type, rows, cols, new Random(100 + (int)type));
        long rowBytes = GgmlTypeInfo.RowBytes(type, cols);
        var expected = new float[cols];
        var actual = new float[cols];
        for (int r = 0; r < rows; r++)
        {
            var row = weights.AsSpan((int)(r * rowBytes), (int)rowBytes);
            Quantization.Dequantize.Row(type, row, expected);
            fixed (byte* w = row)
            fixed (float* y = actual)
                Assert.That(engine_quant_decode_row((int)type, w, cols, y), Is.Zero);
            // Both compute d·q (or d·sc·q − dmin·m) in float32, perhaps associated differently: 2 ulps.
            for (int i = 0; i < cols; i++)
                Assert.That(actual[i], Is.EqualTo(expected[i]).Within(2.0 / (1 << 23) * Math.Abs(expected[i]) + 1e-30), $"row {r}, value {i}");
        }
    }
}
