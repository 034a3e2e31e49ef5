using Engine.Tensors;

namespace Engine.Backends.Cpu;

/// <summary>
/// A Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K or Q6_K matrix repacked for the native kernels, sixteen weight rows side by side: per group of 16
/// rows and block, the rows' scales as floats (Q4_1, Q5_0, Q5_1 also their biases; Q4_K and Q5_K: d, dmin and the sub-blocks' 6-bit scales and mins as bytes; Q6_K: d and the sub-blocks' scales),
/// then the block's codes four values at a time, the 16 rows' four bytes in a row (the fifth bits and Q6_K's high bits apart, as the file keeps them) (<c>kernels/cpu/codes_gemm.c</c>, <c>engine_x16_pack</c>). One 512-bit load
/// then holds four values of sixteen rows, and each activation row's four bytes are broadcast against it:
/// Q4_0's nibbles are unpacked (Q8_0's signs flipped) once for all activation rows, where the file's layout
/// has that done again for every broadcast (llama.cpp repacks Q4_0 for its CPU kernels the same way, as
/// <c>block_q4_0x8</c>). Measured, Q4_0, one thread, 16 activation rows, K = 768, weights from memory:
/// 0.150 → 0.097 ns a weight. Every output is bit for bit the direct kernel's
/// (<see cref="Kernels.MatMul.ExactOffsetReference"/>), for one activation row and for sixteen alike. Built on
/// a matrix's first product (the token embedding, only gathered, never is), in native memory 320/288 of
/// the Q4_0 bytes, 384/320 of Q4_1's, 448/352 of Q5_0's, 448/384 of Q5_1's, 576/544 of Q8_0's, 2432/2304 of Q4_K's, 2944/2816 of Q5_K's, 3392/3360 of Q6_K's; the file's bytes stay mapped
/// for whatever else reads them.
/// </summary>
public sealed unsafe partial class Repacked16 : IDisposable
{
    private byte* _data;

    private Repacked16(GgmlType type, byte* data, int groups, int blocks)
    {
        Type = type;
        _data = data;
        Groups = groups;
        Blocks = blocks;
    }

    /// <summary>Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K or Q6_K.</summary>
    public GgmlType Type { get; }

    /// <summary>Groups of 16 rows.</summary>
    public int Groups { get; }

    /// <summary>Blocks a row: of 32 values (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) or super-blocks of 256 (Q4_K, Q5_K, Q6_K).</summary>
    public int Blocks { get; }

    /// <summary>Bytes of one group of 16 rows.</summary>
    public long GroupBytes => (long)Blocks * BlockBytes(Type);

    /// <summary>
    /// Bytes of one group of 16 rows and one block: of 32 values, 16 float scales (Q4_1, Q5_0, Q5_1: and biases) and 16 × 32 codes
    /// (Q4_0 two a byte, the Q5s with their fifth bits); Q4_K's
    /// super-block of 256, 16 floats d and dmin, 8 × 16 scale and min bytes, 16 × 256 codes two a byte (Q5_K: and their fifth bits); Q6_K's, 16 floats d,
    /// 16 × 16 scale bytes, 16 × 256 codes of 6 bits.
    /// </summary>
    public static int BlockBytes(GgmlType type) => type switch
    {
        GgmlType.Q4_0 => 320, GgmlType.Q4_1 => 384, GgmlType.Q5_0 or GgmlType.Q5_1 => 448, GgmlType.Q8_0 => 576,
        GgmlType.Q4_K => 2432, GgmlType.Q5_K => 2944, _ => 3392,
    };

    /// <summary>Values a block of <paramref name="type"/> holds.</summary>
    private static int BlockValues(GgmlType type) => type is GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K ? 256 : 32;

    /// <summary>The group holding rows 16·<paramref name="group"/> .. 16·group + 15.</summary>
    public byte* Group(int group) => _data + group * GroupBytes;

    /// <summary>Whether <paramref name="w"/> can be repacked here (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K or Q6_K, rows a multiple of 16, the native kernels loaded).</summary>
    public static bool Applies(TensorView w) =>
        NativeKernels.Available && (w.Type is GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1 or GgmlType.Q8_0 or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K) && w.RowCount % 16 == 0
        && w.RowLength % BlockValues(w.Type) == 0 && w.RowLength / 32 <= 4096;

    public static Repacked16 Pack(TensorView w)
    {
        if (!Applies(w))
            throw new ArgumentException($"{w.Name}: {w.Type} [{w.RowCount} x {w.RowLength}] is not repacked (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K or Q6_K, rows in sixteens, under the native kernels)");
        int rows = checked((int)w.RowCount), blocks = checked((int)(w.RowLength / BlockValues(w.Type)));
        long bytes = (long)rows / 16 * blocks * BlockBytes(w.Type);
        byte* data = (byte*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)bytes, 64);
        if (NativeKernels.engine_x16_pack((int)w.Type, w.Data, w.RowBytes, rows, blocks, data) != 0)
        {
            System.Runtime.InteropServices.NativeMemory.AlignedFree(data);
            throw new InvalidOperationException($"{w.Name}: engine_x16_pack refused {w.Type}");
        }
        if (OperatingSystem.IsLinux())
        {
            // the whole pages inside the tensor's bytes; advice only (before Linux 5.4 it fails, and nothing changes)
            const long page = 4096;
            long first = ((long)w.Data + page - 1) & ~(page - 1), end = ((long)w.Data + w.ByteSize) & ~(page - 1);
            if (end > first)
                _ = madvise((nint)first, (nuint)(end - first), MadvisePageOut);
        }
        return new Repacked16(w.Type, data, rows / 16, blocks);
    }

    private const int MadvisePageOut = 21;

    [System.Runtime.InteropServices.LibraryImport("libc", SetLastError = true)]
    private static partial int madvise(nint address, nuint length, int advice);

    public void Dispose()
    {
        System.Runtime.InteropServices.NativeMemory.AlignedFree(_data);
        _data = null;
    }
}
