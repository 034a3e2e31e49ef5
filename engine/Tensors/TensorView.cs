namespace Engine.Tensors;

/// <summary>
/// A weight tensor as it lies in a mapped model file: name (GGUF naming), element type, shape in ggml
/// order (<c>Dims[0]</c> innermost, so a matrix of <c>rows</c> × <c>cols</c> is <c>[cols, rows]</c>),
/// and a pointer to its bytes. Valid while the file it came from is open.
/// </summary>
public sealed unsafe class TensorView
{
    public TensorView(string name, GgmlType type, long[] dims, byte* data, long byteSize)
    {
        Name = name;
        Type = type;
        Dims = dims;
        Data = data;
        ByteSize = byteSize;
    }

    public string Name { get; }

    public GgmlType Type { get; }

    public IReadOnlyList<long> Dims { get; }

    public byte* Data { get; }

    public long ByteSize { get; }

    public long ElementCount => Dims.Aggregate(1L, (a, b) => a * b);

    /// <summary>Length of a row (the innermost dimension).</summary>
    public long RowLength => Dims[0];

    /// <summary>Number of rows: the product of all dimensions but the innermost.</summary>
    public long RowCount => ElementCount / Math.Max(1, Dims[0]);

    public long RowBytes => GgmlTypeInfo.RowBytes(Type, RowLength);

    /// <summary>The bytes of row <paramref name="row"/>.</summary>
    public ReadOnlySpan<byte> Row(long row)
    {
        if ((ulong)row >= (ulong)RowCount)
            throw new ArgumentOutOfRangeException(nameof(row), $"{Name}: row {row} of {RowCount}");
        long bytes = RowBytes;
        return new ReadOnlySpan<byte>(Data + row * bytes, checked((int)bytes));
    }

    /// <summary>
    /// Rows <paramref name="start"/>.. of a matrix as a tensor of their own, in place (no copy): a fused
    /// tensor's parts (Phi-3's q/k/v and gate/up) are consecutive rows.
    /// </summary>
    public TensorView RowSlice(string name, long start, long count)
    {
        if (Dims.Count != 2 || start < 0 || count <= 0 || start + count > RowCount)
            throw new ArgumentOutOfRangeException(nameof(start), $"{Name}: rows {start}..{start + count - 1} of a {ShapeText} tensor");
        return new TensorView(name, Type, [RowLength, count], Data + start * RowBytes, count * RowBytes);
    }

    /// <summary>
    /// Matrix <paramref name="index"/> of a stack of matrices ([cols, rows, count] — GGUF's 3-D expert
    /// tensors, <c>ffn_gate_exps</c> and kin) as a tensor of its own, in place (no copy).
    /// </summary>
    public TensorView Matrix(string name, long index)
    {
        if (Dims.Count != 3 || index < 0 || index >= Dims[2])
            throw new ArgumentOutOfRangeException(nameof(index), $"{Name}: matrix {index} of a {ShapeText} tensor");
        long bytes = Dims[1] * RowBytes;
        return new TensorView(name, Type, [Dims[0], Dims[1]], Data + index * bytes, bytes);
    }

    /// <summary>The same elements seen with other dimensions of the same element count (a vector as a one-row matrix).</summary>
    public TensorView Reshape(long[] dims)
    {
        if (dims.Aggregate(1L, (a, b) => a * b) != ElementCount || dims[0] != Dims[0])
            throw new ArgumentException($"{Name}: cannot view a {ShapeText} tensor as [{string.Join(", ", dims)}]");
        return new TensorView(Name, Type, dims, Data, ByteSize);
    }

    public string ShapeText => "[" + string.Join(", ", Dims) + "]";

    public override string ToString() => $"{Name} {Type} {ShapeText}";
}
