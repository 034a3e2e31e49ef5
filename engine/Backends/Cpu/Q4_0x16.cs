using Engine.Tensors;

namespace Engine.Backends.Cpu;

/// <summary>
/// A Q4_0 matrix repacked for the native kernels, sixteen weight rows side by side: per group of 16 rows
/// and block of 32 values, the rows' scales as floats, then each quarter of the block as the 16 rows' four
/// packed bytes in a row (<c>kernels/cpu/codes_gemm.c</c>, <c>engine_q4_0x16_pack</c>). One 512-bit load then
/// holds four values of sixteen rows, and each activation row's four bytes are broadcast against it: the
/// nibbles are unpacked once for all activation rows, where the file's layout has them unpacked again for
/// every broadcast (llama.cpp repacks Q4_0 for its CPU kernels the same way, as <c>block_q4_0x8</c>).
/// Measured, one thread, 16 activation rows, K = 768, weights from memory: 0.150 → 0.097 ns a weight.
/// Every output is bit for bit the direct Q4_0 kernel's (<see cref="Kernels.MatMul.ExactOffsetReference"/>),
/// for one activation row and for sixteen alike. Built on a matrix's first product (the token embedding,
/// only gathered, never is), in native memory 320/288 of the Q4_0 bytes; the file's bytes stay mapped
/// for whatever else reads them.
/// </summary>
public sealed unsafe partial class Q4_0x16 : IDisposable
{
    private byte* _data;

    private Q4_0x16(byte* data, int groups, int blocks)
    {
        _data = data;
        Groups = groups;
        Blocks = blocks;
    }

    /// <summary>Groups of 16 rows.</summary>
    public int Groups { get; }

    /// <summary>Blocks of 32 values a row.</summary>
    public int Blocks { get; }

    /// <summary>Bytes of one group of 16 rows.</summary>
    public long GroupBytes => (long)Blocks * NativeKernels.Q4_0x16Block;

    /// <summary>The group holding rows 16·<paramref name="group"/> .. 16·group + 15.</summary>
    public byte* Group(int group) => _data + group * GroupBytes;

    /// <summary>Whether <paramref name="w"/> can be repacked here (Q4_0, rows a multiple of 16, the native kernels loaded).</summary>
    public static bool Applies(TensorView w) =>
        NativeKernels.Available && w.Type == GgmlType.Q4_0 && w.RowCount % 16 == 0 && w.RowLength % 32 == 0 && w.RowLength / 32 <= 4096;

    public static Q4_0x16 Pack(TensorView w)
    {
        int rows = checked((int)w.RowCount), blocks = checked((int)(w.RowLength / 32));
        long bytes = (long)rows / 16 * blocks * NativeKernels.Q4_0x16Block;
        byte* data = (byte*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)bytes, 64);
        NativeKernels.engine_q4_0x16_pack(w.Data, w.RowBytes, rows, blocks, data);
        if (OperatingSystem.IsLinux())
        {
            // the whole pages inside the tensor's bytes; advice only (before Linux 5.4 it fails, and nothing changes)
            const long page = 4096;
            long first = ((long)w.Data + page - 1) & ~(page - 1), end = ((long)w.Data + w.ByteSize) & ~(page - 1);
            if (end > first)
                _ = madvise((nint)first, (nuint)(end - first), MadvisePageOut);
        }
        return new Q4_0x16(data, rows / 16, blocks);
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
