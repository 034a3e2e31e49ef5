using Engine.Tensors;

namespace Engine.Formats.Gguf;

/// <summary>
/// One tensor of a GGUF file: name, type and shape (ggml order: <c>Dims[0]</c> is the contiguous,
/// innermost dimension), and where its bytes lie relative to the start of the data section.
/// </summary>
public sealed class GgufTensorInfo
{
    internal GgufTensorInfo(string name, GgmlType type, long[] dims, long offset, long byteSize)
    {
        Name = name;
        Type = type;
        Dims = dims;
        Offset = offset;
        ByteSize = byteSize;
    }

    public string Name { get; }

    public GgmlType Type { get; }

    /// <summary>Shape with the innermost dimension first (ggml's <c>ne</c>).</summary>
    public IReadOnlyList<long> Dims { get; }

    /// <summary>Byte offset from the start of the data section.</summary>
    public long Offset { get; }

    public long ByteSize { get; }

    public long ElementCount => Dims.Aggregate(1L, (a, b) => a * b);

    public override string ToString() => $"{Name} {Type} [{string.Join(", ", Dims)}]";
}
