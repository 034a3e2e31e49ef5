using System.Buffers.Binary;
using System.Text.Json;
using Engine.Tensors;

namespace Engine.Formats.Safetensors;

/// <summary>
/// One tensor entry of a safetensors header. <see cref="Shape"/> is row-major as stored (outermost
/// first); <see cref="Type"/> is null for dtypes the engine does not compute with (I64, U8, ...).
/// </summary>
public sealed record SafetensorsTensor(string Name, string DType, GgmlType? Type, long[] Shape, long Offset, long ByteSize);

/// <summary>
/// A single <c>.safetensors</c> file (https://github.com/huggingface/safetensors), memory-mapped:
/// u64 header length N, N bytes of JSON mapping names to { dtype, shape, data_offsets: [begin, end] }
/// (offsets relative to the end of the header), then the data. The header is validated completely
/// before anything is used: bounded size, known dtypes, shapes whose byte size matches the offsets,
/// ranges inside the file and not overlapping.
/// </summary>
public sealed unsafe class SafetensorsFile : IDisposable
{
    /// <summary>The format's own limit on the JSON header.</summary>
    public const long MaxHeaderBytes = 100_000_000;

    private readonly MappedFile _file;

    private SafetensorsFile(MappedFile file, long dataStart, Dictionary<string, SafetensorsTensor> tensors, Dictionary<string, string> metadata)
    {
        _file = file;
        DataStart = dataStart;
        Tensors = tensors;
        Metadata = metadata;
    }

    public string Path => _file.Path;

    public long DataStart { get; }

    public IReadOnlyDictionary<string, SafetensorsTensor> Tensors { get; }

    /// <summary>The optional <c>__metadata__</c> string map.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    public byte* Data(SafetensorsTensor tensor) => _file.Pointer + DataStart + tensor.Offset;

    public static SafetensorsFile Open(string path) => MappedFile.OpenAndParse(path, Parse);

    private static SafetensorsFile Parse(MappedFile file)
    {
        string p = file.Path;
        if (file.Length < 8)
            throw new ModelFormatException(p, "header length", $"the file has {file.Length} bytes, fewer than the 8-byte header length");
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(file.Span(0, 8));
        if (n > MaxHeaderBytes)
            throw new ModelFormatException(p, "header length", $"{n} bytes exceeds the format's limit of {MaxHeaderBytes}");
        if ((long)n > file.Length - 8)
            throw new ModelFormatException(p, "header length", $"{n} bytes, but only {file.Length - 8} follow: file truncated?");
        long dataStart = 8 + (long)n;
        long dataLength = file.Length - dataStart;

        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(file.Span(8, (int)n).ToArray(), new JsonDocumentOptions { MaxDepth = 16 });
        }
        catch (JsonException e)
        {
            throw new ModelFormatException(p, "header", $"is not valid JSON: {e.Message}", e);
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new ModelFormatException(p, "header", $"must be a JSON object, found {doc.RootElement.ValueKind}");
            var tensors = new Dictionary<string, SafetensorsTensor>(StringComparer.Ordinal);
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var entry in doc.RootElement.EnumerateObject())
            {
                if (entry.Name == "__metadata__")
                {
                    if (entry.Value.ValueKind != JsonValueKind.Object)
                        throw new ModelFormatException(p, "__metadata__", "must be an object of strings");
                    foreach (var m in entry.Value.EnumerateObject())
                        metadata[m.Name] = m.Value.ValueKind == JsonValueKind.String ? m.Value.GetString()! : m.Value.GetRawText();
                    continue;
                }
                if (tensors.ContainsKey(entry.Name))
                    throw new ModelFormatException(p, $"tensor '{entry.Name}'", "appears twice in the header");
                tensors[entry.Name] = ParseTensor(p, entry.Name, entry.Value, dataLength);
            }
            SafetensorsTensor? previous = null;
            foreach (var t in tensors.Values.OrderBy(t => t.Offset).ThenBy(t => t.ByteSize))
            {
                if (previous is not null && t.Offset < previous.Offset + previous.ByteSize)
                    throw new ModelFormatException(p, $"tensor '{t.Name}'", $"data at {t.Offset} overlaps tensor '{previous.Name}'");
                previous = t;
            }
            return new SafetensorsFile(file, dataStart, tensors, metadata);
        }
    }

    private static SafetensorsTensor ParseTensor(string p, string name, JsonElement e, long dataLength)
    {
        string field = $"tensor '{name}'";
        if (e.ValueKind != JsonValueKind.Object)
            throw new ModelFormatException(p, field, $"must be an object, found {e.ValueKind}");
        if (!e.TryGetProperty("dtype", out var dtypeElement) || dtypeElement.ValueKind != JsonValueKind.String)
            throw new ModelFormatException(p, field + " dtype", "missing or not a string");
        string dtype = dtypeElement.GetString()!;
        int elementSize = dtype switch
        {
            "F64" or "I64" or "U64" => 8,
            "F32" or "I32" or "U32" => 4,
            "F16" or "BF16" or "I16" or "U16" => 2,
            "I8" or "U8" or "BOOL" or "F8_E4M3" or "F8_E5M2" => 1,
            _ => throw new ModelFormatException(p, field + " dtype", $"'{dtype}' is not a safetensors dtype"),
        };
        GgmlType? type = dtype switch
        {
            "F32" => GgmlType.F32,
            "F16" => GgmlType.F16,
            "BF16" => GgmlType.BF16,
            _ => null,
        };
        if (!e.TryGetProperty("shape", out var shapeElement) || shapeElement.ValueKind != JsonValueKind.Array)
            throw new ModelFormatException(p, field + " shape", "missing or not an array");
        if (shapeElement.GetArrayLength() > 8)
            throw new ModelFormatException(p, field + " shape", $"{shapeElement.GetArrayLength()} dimensions is more than this reader accepts (8)");
        var shape = new long[shapeElement.GetArrayLength()];
        long elements = 1;
        int i = 0;
        foreach (var d in shapeElement.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long v) || v < 0)
                throw new ModelFormatException(p, field + " shape", $"dimension {d.GetRawText()} is not a non-negative integer");
            shape[i++] = v;
            if (v != 0 && elements > long.MaxValue / elementSize / v)
                throw new ModelFormatException(p, field + " shape", "byte size overflows 64 bits");
            elements *= v;
        }
        if (!e.TryGetProperty("data_offsets", out var offsets) || offsets.ValueKind != JsonValueKind.Array || offsets.GetArrayLength() != 2)
            throw new ModelFormatException(p, field + " data_offsets", "missing or not a [begin, end] pair");
        if (!offsets[0].TryGetInt64(out long begin) || !offsets[1].TryGetInt64(out long end) || begin < 0 || end < begin)
            throw new ModelFormatException(p, field + " data_offsets", $"{offsets.GetRawText()} is not a valid range");
        if (end > dataLength)
            throw new ModelFormatException(p, field + " data_offsets", $"range [{begin}, {end}) ends past the data ({dataLength} bytes): file truncated?");
        long bytes = elements * elementSize;
        if (end - begin != bytes)
            throw new ModelFormatException(p, field, $"shape [{string.Join(", ", shape)}] of {dtype} needs {bytes} bytes, but data_offsets span {end - begin}");
        return new SafetensorsTensor(name, dtype, type, shape, begin, bytes);
    }

    public void Dispose() => _file.Dispose();
}
