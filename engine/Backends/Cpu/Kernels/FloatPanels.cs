using System.Runtime.InteropServices;

namespace Engine.Backends.Cpu.Kernels;

/// <summary>
/// Float activations re-laid out for the float matrix kernels: rows in panels of 16 (or a last panel of
/// 8), each panel stored as [column/8][row][8 floats], so the kernel reads one sequential stream instead
/// of 16 rows whose identical offsets (a power-of-two row stride) collide in the same L1 cache sets.
/// Packed once per matrix product and reused by every weight row.
/// </summary>
public sealed unsafe class FloatPanels : IDisposable
{
    public const int Rows16 = 16;

    private float* _data;
    private long _capacity;
    private float* _transposed;
    private long _transposedCapacity;

    /// <summary>Whether full panels also exist column by column (<see cref="Transposed"/>), for the 512-bit kernels.</summary>
    public static bool HasTransposed => System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated;

    /// <summary>Full panel p (rows 16p..16p+15) as [column][16 rows]: one 512-bit vector per column.</summary>
    public float* Transposed(int p) => _transposed + (long)p * Rows16 * Cols;

    public int Rows { get; private set; }
    public int Cols { get; private set; }

    /// <summary>Panels of 16 rows; a remaining group of 8 forms one last panel of 8.</summary>
    public int FullPanels => Rows / Rows16;

    public bool HasHalfPanel => Rows % Rows16 >= 8;

    /// <summary>The panel holding rows 16p.. (16 rows, or 8 for the half panel).</summary>
    public float* Panel(int p) => _data + (long)p * Rows16 * Cols;

    /// <summary>Packs the whole groups of 8 rows of x (rows × cols, row-major; cols a multiple of 8).</summary>
    public void Pack(ReadOnlySpan<float> x, int rows, int cols)
    {
        Rows = rows;
        Cols = cols;
        int packed = rows / 8 * 8;
        if (_capacity < (long)packed * cols)
        {
            // 64-byte aligned: the kernels read 32-byte vectors, which must not straddle cache lines.
            NativeMemory.AlignedFree(_data);
            _capacity = Math.Max((long)packed * cols, _capacity * 2);
            _data = (float*)NativeMemory.AlignedAlloc((nuint)(_capacity * sizeof(float)), 64);
        }
        int full = rows / Rows16;
        if (HasTransposed && _transposedCapacity < (long)full * Rows16 * cols)
        {
            NativeMemory.AlignedFree(_transposed);
            _transposedCapacity = Math.Max((long)full * Rows16 * cols, _transposedCapacity * 2);
            _transposed = (float*)NativeMemory.AlignedAlloc((nuint)(_transposedCapacity * sizeof(float)), 64);
        }
        fixed (float* src = x)
        {
            for (int p = 0; HasTransposed && p < full; p++)
            {
                float* dst = Transposed(p);
                for (int r = 0; r < Rows16; r++)
                {
                    float* row = src + (long)(p * Rows16 + r) * cols;
                    for (int c = 0; c < cols; c++)
                        dst[(long)c * Rows16 + r] = row[c];
                }
            }
            for (int p = 0; p * Rows16 < packed; p++)
            {
                int height = Math.Min(Rows16, packed - p * Rows16);
                float* dst = Panel(p);
                for (int c8 = 0; c8 < cols / 8; c8++)
                {
                    for (int r = 0; r < height; r++)
                        Buffer.MemoryCopy(src + (long)(p * Rows16 + r) * cols + c8 * 8, dst + ((long)c8 * height + r) * 8, 32, 32);
                }
            }
        }
    }

    public void Dispose()
    {
        NativeMemory.AlignedFree(_data);
        NativeMemory.AlignedFree(_transposed);
        _data = _transposed = null;
        _capacity = _transposedCapacity = 0;
    }
}
