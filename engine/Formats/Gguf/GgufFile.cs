using Engine.Tensors;

namespace Engine.Formats.Gguf;

/// <summary>
/// A GGUF v2/v3 file (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md), memory-mapped.
/// The header, metadata and tensor table are parsed and validated on open; tensor data stays in the
/// mapping and is handed out as pointers into it.
/// </summary>
/// <remarks>
/// Layout: magic "GGUF", u32 version, u64 tensor count, u64 metadata count, the metadata (key string,
/// u32 type, value), the tensor infos (name, u32 n_dims, u64 dims[n_dims], u32 type, u64 offset), then
/// padding to <c>general.alignment</c> (default 32) and the data section. Every count, length, offset
/// and dimension read from the file is checked against the file's size before it is used.
/// </remarks>
public sealed unsafe class GgufFile : IDisposable
{
    public const uint Magic = 0x46554747; // "GGUF" little-endian
    public const int DefaultAlignment = 32;
    public const int MaxDims = 4;
    private const int MaxArrayDepth = 1;

    private readonly MappedFile _file;
    private readonly Dictionary<string, GgufTensorInfo> _byName;

    private GgufFile(MappedFile file, uint version, GgufMetadata metadata, List<GgufTensorInfo> tensors, int alignment, long dataOffset)
    {
        _file = file;
        Version = version;
        Metadata = metadata;
        Tensors = tensors;
        Alignment = alignment;
        DataOffset = dataOffset;
        _byName = tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
    }

    public string Path => _file.Path;

    public uint Version { get; }

    public GgufMetadata Metadata { get; }

    public IReadOnlyList<GgufTensorInfo> Tensors { get; }

    public int Alignment { get; }

    /// <summary>File offset of the data section.</summary>
    public long DataOffset { get; }

    public long FileLength => _file.Length;

    public GgufTensorInfo? FindTensor(string name) => _byName.GetValueOrDefault(name);

    /// <summary>Pointer to the first byte of a tensor's data inside the mapping.</summary>
    public byte* TensorData(GgufTensorInfo tensor) => _file.Pointer + DataOffset + tensor.Offset;

    /// <summary>The mapping itself, kept alive by whoever uses tensor pointers.</summary>
    public MappedFile Mapping => _file;

    /// <summary>Opens and validates a GGUF file.</summary>
    public static GgufFile Open(string path) => MappedFile.OpenAndParse(path, Parse);

    private static GgufFile Parse(MappedFile file)
    {
        var r = new BoundedReader(file);
        uint magic = r.ReadU32("magic");
        if (magic != Magic)
            throw new ModelFormatException(file.Path, "magic", $"0x{magic:X8} is not \"GGUF\" (0x{Magic:X8}): not a GGUF file");
        uint version = r.ReadU32("version");
        if (version == 1)
            throw new ModelFormatException(file.Path, "version", "GGUF v1 is not supported (convert the file to v3 with a current llama.cpp)");
        if (version is not (2 or 3))
            throw new ModelFormatException(file.Path, "version", $"{version} is not a GGUF version this reader knows (2 or 3)");

        // Smallest possible entries: a tensor info is name length (8) + n_dims (4) + type (4) + offset (8)
        // plus at least one dimension (8); a metadata entry is key length (8) + type (4) + 1 value byte.
        int tensorCount = r.ReadCount("tensor_count", minItemBytes: 32);
        int kvCount = r.ReadCount("metadata_kv_count", minItemBytes: 13);

        var values = new Dictionary<string, GgufValue>(kvCount, StringComparer.Ordinal);
        var order = new List<string>(kvCount);
        for (int i = 0; i < kvCount; i++)
        {
            string key = r.ReadString($"metadata[{i}].key");
            if (values.ContainsKey(key))
                throw new ModelFormatException(file.Path, key, "metadata key appears twice");
            var type = (GgufValueType)r.ReadU32($"{key} (value type)");
            values[key] = ReadValue(r, key, type, depth: 0);
            order.Add(key);
        }
        var metadata = new GgufMetadata(file.Path, values, order);

        int alignment = DefaultAlignment;
        if (values.TryGetValue("general.alignment", out var alignValue))
        {
            if (alignValue.Type != GgufValueType.UInt32)
                throw new ModelFormatException(file.Path, "general.alignment", $"must be a u32, found {alignValue.Type}");
            uint a = (uint)alignValue.RawValue;
            if (a == 0 || (a & (a - 1)) != 0 || a > 1 << 20)
                throw new ModelFormatException(file.Path, "general.alignment", $"{a} is not a power of two between 1 and 2^20");
            alignment = (int)a;
        }

        var tensors = new List<GgufTensorInfo>(tensorCount);
        var names = new HashSet<string>(StringComparer.Ordinal);
        for (int i = 0; i < tensorCount; i++)
            tensors.Add(ReadTensorInfo(r, i, alignment, names));

        long dataOffset = AlignUp(r.Position, alignment);
        if (dataOffset > file.Length && tensors.Count > 0)
            throw new ModelFormatException(file.Path, "data section", $"starts at {dataOffset}, past the end of the file ({file.Length} bytes)");
        long dataLength = file.Length - dataOffset;
        CheckTensorRanges(file.Path, tensors, dataLength);
        return new GgufFile(file, version, metadata, tensors, alignment, dataOffset);
    }

    private static GgufTensorInfo ReadTensorInfo(BoundedReader r, int index, int alignment, HashSet<string> names)
    {
        string name = r.ReadString($"tensor[{index}].name");
        string field = $"tensor '{name}'";
        if (!names.Add(name))
            throw new ModelFormatException(r.File, field, "tensor name appears twice");
        uint nDims = r.ReadU32(field + " n_dims");
        if (nDims is 0 or > MaxDims)
            throw new ModelFormatException(r.File, field + " n_dims", $"{nDims} is not between 1 and {MaxDims}");
        var dims = new long[nDims];
        long elements = 1;
        for (int d = 0; d < nDims; d++)
        {
            ulong n = r.ReadU64($"{field} dims[{d}]");
            if (n > long.MaxValue / 2)
                throw new ModelFormatException(r.File, $"{field} dims[{d}]", $"{n} is not a valid dimension");
            dims[d] = (long)n;
            if (n != 0 && elements > long.MaxValue / (long)n)
                throw new ModelFormatException(r.File, field, $"shape [{string.Join(", ", dims.Take(d + 1))}] overflows 64 bits");
            elements *= (long)n;
        }
        uint typeId = r.ReadU32(field + " type");
        var type = (GgmlType)typeId;
        var layout = GgmlTypeInfo.Layout(type);
        if (layout is null)
        {
            string typeName = Enum.IsDefined(type) ? $"{type} ({typeId})" : typeId.ToString(System.Globalization.CultureInfo.InvariantCulture);
            throw new ModelFormatException(r.File, field + " type", $"tensor type {typeName} is not supported");
        }
        var (blockSize, typeSize) = layout.Value;
        if (dims[0] % blockSize != 0)
            throw new ModelFormatException(r.File, field, $"row length {dims[0]} is not a multiple of the {type} block size {blockSize}");
        ulong offset = r.ReadU64(field + " offset");
        if (offset > long.MaxValue || (long)offset % alignment != 0)
            throw new ModelFormatException(r.File, field + " offset", $"{offset} is not a multiple of the alignment {alignment}");
        long blocks = elements / blockSize;
        if (blocks > long.MaxValue / typeSize)
            throw new ModelFormatException(r.File, field, "byte size overflows 64 bits");
        return new GgufTensorInfo(name, type, dims, (long)offset, blocks * typeSize);
    }

    private static void CheckTensorRanges(string path, List<GgufTensorInfo> tensors, long dataLength)
    {
        GgufTensorInfo? previous = null;
        foreach (var t in tensors.OrderBy(t => t.Offset))
        {
            if (t.Offset > dataLength || t.ByteSize > dataLength - t.Offset)
                throw new ModelFormatException(path, $"tensor '{t.Name}'",
                    $"data [{t.Offset}, {t.Offset + t.ByteSize}) lies beyond the data section ({dataLength} bytes): file truncated?");
            if (previous is not null && t.Offset < previous.Offset + previous.ByteSize)
                throw new ModelFormatException(path, $"tensor '{t.Name}'", $"data at offset {t.Offset} overlaps tensor '{previous.Name}'");
            previous = t;
        }
    }

    private static GgufValue ReadValue(BoundedReader r, string key, GgufValueType type, int depth)
    {
        switch (type)
        {
            case GgufValueType.UInt8: return GgufValue.From(r.ReadU8(key));
            case GgufValueType.Int8: return GgufValue.From((sbyte)r.ReadU8(key));
            case GgufValueType.UInt16: return GgufValue.From(r.ReadU16(key));
            case GgufValueType.Int16: return GgufValue.From((short)r.ReadU16(key));
            case GgufValueType.UInt32: return GgufValue.From(r.ReadU32(key));
            case GgufValueType.Int32: return GgufValue.From((int)r.ReadU32(key));
            case GgufValueType.UInt64: return GgufValue.From(r.ReadU64(key));
            case GgufValueType.Int64: return GgufValue.From((long)r.ReadU64(key));
            case GgufValueType.Float32: return GgufValue.From(r.ReadF32(key));
            case GgufValueType.Float64: return GgufValue.From(r.ReadF64(key));
            case GgufValueType.Bool: return GgufValue.From(ReadBool(r, key));
            case GgufValueType.String: return GgufValue.From(r.ReadString(key));
            case GgufValueType.Array:
                if (depth >= MaxArrayDepth)
                    throw new ModelFormatException(r.File, key, "arrays of arrays are not supported");
                return ReadArray(r, key);
            default:
                throw new ModelFormatException(r.File, key, $"unknown metadata value type {(uint)type}");
        }
    }

    private static bool ReadBool(BoundedReader r, string key)
    {
        byte b = r.ReadU8(key);
        return b switch
        {
            0 => false,
            1 => true,
            _ => throw new ModelFormatException(r.File, key, $"bool value {b} is neither 0 nor 1"),
        };
    }

    private static GgufValue ReadArray(BoundedReader r, string key)
    {
        var elementType = (GgufValueType)r.ReadU32(key + " (array element type)");
        int size = elementType switch
        {
            GgufValueType.UInt8 or GgufValueType.Int8 or GgufValueType.Bool => 1,
            GgufValueType.UInt16 or GgufValueType.Int16 => 2,
            GgufValueType.UInt32 or GgufValueType.Int32 or GgufValueType.Float32 => 4,
            GgufValueType.UInt64 or GgufValueType.Int64 or GgufValueType.Float64 => 8,
            GgufValueType.String => 8, // at least the length prefix
            GgufValueType.Array => throw new ModelFormatException(r.File, key, "arrays of arrays are not supported"),
            _ => throw new ModelFormatException(r.File, key, $"unknown array element type {(uint)elementType}"),
        };
        int n = r.ReadCount(key + " (array length)", size);
        switch (elementType)
        {
            case GgufValueType.String:
                var strings = new string[n];
                for (int i = 0; i < n; i++)
                    strings[i] = r.ReadString($"{key}[{i}]");
                return GgufValue.FromArray(strings);
            case GgufValueType.Bool:
                var bools = new bool[n];
                for (int i = 0; i < n; i++)
                    bools[i] = ReadBool(r, $"{key}[{i}]");
                return GgufValue.FromArray(bools);
            case GgufValueType.UInt8: return GgufValue.FromArray(r.Take(n, key).ToArray());
            case GgufValueType.Int8: return GgufValue.FromArray(Cast<sbyte>(r.Take(n, key)));
            case GgufValueType.UInt16: return GgufValue.FromArray(Cast<ushort>(Bytes(r, n, 2, key)));
            case GgufValueType.Int16: return GgufValue.FromArray(Cast<short>(Bytes(r, n, 2, key)));
            case GgufValueType.UInt32: return GgufValue.FromArray(Cast<uint>(Bytes(r, n, 4, key)));
            case GgufValueType.Int32: return GgufValue.FromArray(Cast<int>(Bytes(r, n, 4, key)));
            case GgufValueType.Float32: return GgufValue.FromArray(Cast<float>(Bytes(r, n, 4, key)));
            case GgufValueType.UInt64: return GgufValue.FromArray(Cast<ulong>(Bytes(r, n, 8, key)));
            case GgufValueType.Int64: return GgufValue.FromArray(Cast<long>(Bytes(r, n, 8, key)));
            default: return GgufValue.FromArray(Cast<double>(Bytes(r, n, 8, key)));
        }
    }

    private static ReadOnlySpan<byte> Bytes(BoundedReader r, int count, int size, string key)
    {
        long bytes = (long)count * size;
        if (bytes > int.MaxValue)
            throw new ModelFormatException(r.File, key, $"array of {count} items exceeds 2 GiB");
        return r.Take((int)bytes, key);
    }

    // GGUF is little-endian, as is every platform .NET runs this engine on.
    private static T[] Cast<T>(ReadOnlySpan<byte> bytes) where T : unmanaged =>
        System.Runtime.InteropServices.MemoryMarshal.Cast<byte, T>(bytes).ToArray();

    internal static long AlignUp(long value, long alignment) => (value + alignment - 1) / alignment * alignment;

    public void Dispose() => _file.Dispose();
}
