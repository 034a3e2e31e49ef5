using Engine.Tensors;

namespace Engine.Backends.Cpu.Kernels;

/// <summary>
/// Row gather: dst[i, :] = table[ids[i], :] as float32 — the token-embedding lookup for weights of any
/// format, and (on float32 activations) the gather of the rows the LM head reads. CPU reference of
/// <c>get_rows_&lt;type&gt;</c> in kernels/getrows.cu; the formats are decoded by <see cref="Quantization.Dequantize"/>.
/// </summary>
public static class GetRows
{
    public static void GetRowsF32(ReadOnlySpan<byte> table, int cols, ReadOnlySpan<int> ids, Span<float> dst) => Rows(GgmlType.F32, table, cols, ids, dst);

    public static void GetRowsF16(ReadOnlySpan<byte> table, int cols, ReadOnlySpan<int> ids, Span<float> dst) => Rows(GgmlType.F16, table, cols, ids, dst);

    public static void GetRowsBF16(ReadOnlySpan<byte> table, int cols, ReadOnlySpan<int> ids, Span<float> dst) => Rows(GgmlType.BF16, table, cols, ids, dst);

    public static void GetRowsQ8_0(ReadOnlySpan<byte> table, int cols, ReadOnlySpan<int> ids, Span<float> dst) => Rows(GgmlType.Q8_0, table, cols, ids, dst);

    public static void GetRowsQ4_0(ReadOnlySpan<byte> table, int cols, ReadOnlySpan<int> ids, Span<float> dst) => Rows(GgmlType.Q4_0, table, cols, ids, dst);

    public static void GetRowsQ4_K(ReadOnlySpan<byte> table, int cols, ReadOnlySpan<int> ids, Span<float> dst) => Rows(GgmlType.Q4_K, table, cols, ids, dst);

    public static void GetRowsQ6_K(ReadOnlySpan<byte> table, int cols, ReadOnlySpan<int> ids, Span<float> dst) => Rows(GgmlType.Q6_K, table, cols, ids, dst);

    /// <summary>Any weight type: table holds rows of <paramref name="cols"/> values in <paramref name="type"/>'s format.</summary>
    public static void Rows(GgmlType type, ReadOnlySpan<byte> table, int cols, ReadOnlySpan<int> ids, Span<float> dst)
    {
        int rowBytes = checked((int)GgmlTypeInfo.RowBytes(type, cols));
        int tableRows = table.Length / rowBytes;
        if (dst.Length < ids.Length * cols)
            throw new ArgumentException($"get_rows: dst has {dst.Length} values, {ids.Length} rows of {cols} need {ids.Length * cols}");
        for (int i = 0; i < ids.Length; i++)
        {
            if ((uint)ids[i] >= (uint)tableRows)
                throw new ArgumentOutOfRangeException(nameof(ids), $"get_rows: row {ids[i]} is outside the table's {tableRows} rows");
            Quantization.Dequantize.Row(type, table.Slice(ids[i] * rowBytes, rowBytes), dst.Slice(i * cols, cols));
        }
    }
}
