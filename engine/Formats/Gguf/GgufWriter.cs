using System.Buffers.Binary;
using System.Text;
using Engine.Tensors;

namespace Engine.Formats.Gguf;

/// <summary>
/// Writes GGUF v3 files: metadata in the order added, then tensor infos, then the tensors' data, each
/// aligned to <see cref="Alignment"/>. The file is written next to its destination and moved into
/// place only when complete, so a full disk or a crash never leaves a half-written model behind.
/// </summary>
public sealed class GgufWriter
{
    private readonly List<(string Key, GgufValue Value)> _metadata = [];
    private readonly List<PendingTensor> _tensors = [];

    public int Alignment { get; init; } = GgufFile.DefaultAlignment;

    public GgufWriter Add(string key, GgufValue value)
    {
        ArgumentException.ThrowIfNullOrEmpty(key);
        int existing = _metadata.FindIndex(kv => kv.Key == key);
        if (existing >= 0)
            _metadata[existing] = (key, value);
        else
            _metadata.Add((key, value));
        return this;
    }

    public GgufWriter Add(string key, string value) => Add(key, GgufValue.From(value));
    public GgufWriter Add(string key, uint value) => Add(key, GgufValue.From(value));
    public GgufWriter Add(string key, int value) => Add(key, GgufValue.From(value));
    public GgufWriter Add(string key, float value) => Add(key, GgufValue.From(value));
    public GgufWriter Add(string key, bool value) => Add(key, GgufValue.From(value));

    /// <summary>Adds a tensor whose bytes are already laid out in <paramref name="type"/>'s block format.</summary>
    /// <param name="dims">Shape, innermost dimension first (ggml order).</param>
    public GgufWriter AddTensor(string name, GgmlType type, long[] dims, ReadOnlyMemory<byte> data)
    {
        long bytes = ExpectedBytes(name, type, dims);
        if (data.Length != bytes)
            throw new ArgumentException($"tensor '{name}': {data.Length} bytes given, {type} [{string.Join(", ", dims)}] needs {bytes}");
        return AddTensor(name, type, dims, bytes, s => s.Write(data.Span));
    }

    /// <summary>Adds an F32 tensor.</summary>
    public GgufWriter AddTensor(string name, long[] dims, ReadOnlySpan<float> values) =>
        AddTensor(name, GgmlType.F32, dims, System.Runtime.InteropServices.MemoryMarshal.AsBytes(values).ToArray());

    /// <summary>Adds a tensor whose <paramref name="byteSize"/> bytes are produced by <paramref name="write"/> at write time.</summary>
    public GgufWriter AddTensor(string name, GgmlType type, long[] dims, long byteSize, Action<Stream> write)
    {
        if (_tensors.Any(t => t.Name == name))
            throw new ArgumentException($"tensor '{name}' was added twice");
        long expected = ExpectedBytes(name, type, dims);
        if (byteSize != expected)
            throw new ArgumentException($"tensor '{name}': {byteSize} bytes declared, {type} [{string.Join(", ", dims)}] needs {expected}");
        _tensors.Add(new PendingTensor(name, type, (long[])dims.Clone(), byteSize, write));
        return this;
    }

    /// <summary>Told the tensor bytes written so far and in all, after each tensor (a long write's progress bar).</summary>
    public IProgress<(long Done, long Total)>? Progress { get; init; }

    /// <summary>Writes the file; on any failure the destination is left as it was.</summary>
    public void Write(string path)
    {
        string full = System.IO.Path.GetFullPath(path);
        string temp = full + $".{Environment.ProcessId}.partial";
        try
        {
            using (var stream = new FileStream(temp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
            {
                WriteTo(stream);
                stream.Flush(flushToDisk: true);
            }
            File.Move(temp, full, overwrite: true);
        }
        catch
        {
            try { File.Delete(temp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            throw;
        }
    }

    /// <summary>Writes the whole file to a stream.</summary>
    public void WriteTo(Stream stream)
    {
        var w = new CountingWriter(stream);
        w.U32(GgufFile.Magic);
        w.U32(3);
        w.U64((ulong)_tensors.Count);
        var metadata = _metadata.ToList();
        if (Alignment != GgufFile.DefaultAlignment && !metadata.Any(kv => kv.Key == "general.alignment"))
            metadata.Add(("general.alignment", GgufValue.From((uint)Alignment)));
        w.U64((ulong)metadata.Count);
        foreach (var (key, value) in metadata)
        {
            w.String(key);
            w.U32((uint)value.Type);
            WriteValue(w, value);
        }

        long offset = 0;
        var offsets = new long[_tensors.Count];
        for (int i = 0; i < _tensors.Count; i++)
        {
            var t = _tensors[i];
            w.String(t.Name);
            w.U32((uint)t.Dims.Length);
            foreach (long d in t.Dims)
                w.U64((ulong)d);
            w.U32((uint)t.Type);
            w.U64((ulong)offset);
            offsets[i] = offset;
            offset = GgufFile.AlignUp(offset + t.ByteSize, Alignment);
        }

        w.Pad(Alignment);
        long dataStart = w.Position;
        long total = _tensors.Sum(t => t.ByteSize), done = 0;
        Progress?.Report((0, total));
        for (int i = 0; i < _tensors.Count; i++)
        {
            w.Pad(Alignment);
            if (w.Position - dataStart != offsets[i])
                throw new InvalidOperationException($"tensor '{_tensors[i].Name}' landed at {w.Position - dataStart}, expected {offsets[i]}");
            w.Flush();
            long before = stream.Position;
            _tensors[i].Write(stream);
            long written = stream.Position - before;
            if (written != _tensors[i].ByteSize)
                throw new InvalidOperationException($"tensor '{_tensors[i].Name}': writer produced {written} bytes, expected {_tensors[i].ByteSize}");
            w.Advance(written);
            done += written;
            Progress?.Report((done, total));
        }
        w.Flush();
    }

    private static long ExpectedBytes(string name, GgmlType type, long[] dims)
    {
        if (dims.Length is 0 or > GgufFile.MaxDims || dims.Any(d => d < 0))
            throw new ArgumentException($"tensor '{name}': invalid shape [{string.Join(", ", dims)}]");
        var layout = GgmlTypeInfo.Layout(type) ?? throw new ArgumentException($"tensor '{name}': type {type} is not supported");
        if (dims[0] % layout.BlockSize != 0)
            throw new ArgumentException($"tensor '{name}': row length {dims[0]} is not a multiple of the {type} block size {layout.BlockSize}");
        long elements = dims.Aggregate(1L, (a, b) => checked(a * b));
        return checked(elements / layout.BlockSize * layout.TypeSize);
    }

    private static void WriteValue(CountingWriter w, GgufValue value)
    {
        switch (value.RawValue)
        {
            case byte v: w.Bytes([v]); break;
            case sbyte v: w.Bytes([(byte)v]); break;
            case ushort v: w.U16(v); break;
            case short v: w.U16((ushort)v); break;
            case uint v: w.U32(v); break;
            case int v: w.U32((uint)v); break;
            case ulong v: w.U64(v); break;
            case long v: w.U64((ulong)v); break;
            case float v: w.F32(v); break;
            case double v: w.F64(v); break;
            case bool v: w.Bytes([v ? (byte)1 : (byte)0]); break;
            case string v: w.String(v); break;
            case Array a:
                w.U32((uint)value.ElementType);
                w.U64((ulong)a.Length);
                foreach (object? item in a)
                    WriteValue(w, Box(item!, value.ElementType));
                break;
            default: throw new ArgumentException($"cannot write a {value.RawValue.GetType()}");
        }
    }

    private static GgufValue Box(object item, GgufValueType type) => item switch
    {
        byte v => GgufValue.From(v),
        sbyte v => GgufValue.From(v),
        ushort v => GgufValue.From(v),
        short v => GgufValue.From(v),
        uint v => GgufValue.From(v),
        int v => GgufValue.From(v),
        ulong v => GgufValue.From(v),
        long v => GgufValue.From(v),
        float v => GgufValue.From(v),
        double v => GgufValue.From(v),
        bool v => GgufValue.From(v),
        string v => GgufValue.From(v),
        _ => throw new ArgumentException($"cannot write an array element of type {type}"),
    };

    private sealed record PendingTensor(string Name, GgmlType Type, long[] Dims, long ByteSize, Action<Stream> Write);

    /// <summary>Buffered little-endian writer that tracks the logical position (for alignment).</summary>
    private sealed class CountingWriter(Stream stream)
    {
        private readonly byte[] _buffer = new byte[1 << 16];
        private int _used;

        public long Position { get; private set; }

        public void U16(ushort v) { Span<byte> b = stackalloc byte[2]; BinaryPrimitives.WriteUInt16LittleEndian(b, v); Bytes(b); }
        public void U32(uint v) { Span<byte> b = stackalloc byte[4]; BinaryPrimitives.WriteUInt32LittleEndian(b, v); Bytes(b); }
        public void U64(ulong v) { Span<byte> b = stackalloc byte[8]; BinaryPrimitives.WriteUInt64LittleEndian(b, v); Bytes(b); }
        public void F32(float v) { Span<byte> b = stackalloc byte[4]; BinaryPrimitives.WriteSingleLittleEndian(b, v); Bytes(b); }
        public void F64(double v) { Span<byte> b = stackalloc byte[8]; BinaryPrimitives.WriteDoubleLittleEndian(b, v); Bytes(b); }

        public void String(string s)
        {
            byte[] utf8 = Encoding.UTF8.GetBytes(s);
            U64((ulong)utf8.Length);
            Bytes(utf8);
        }

        public void Pad(int alignment)
        {
            long pad = GgufFile.AlignUp(Position, alignment) - Position;
            for (long i = 0; i < pad; i++)
                Bytes([0]);
        }

        public void Bytes(ReadOnlySpan<byte> bytes)
        {
            if (_used + bytes.Length > _buffer.Length)
                Flush();
            if (bytes.Length > _buffer.Length)
                stream.Write(bytes);
            else
            {
                bytes.CopyTo(_buffer.AsSpan(_used));
                _used += bytes.Length;
            }
            Position += bytes.Length;
        }

        public void Advance(long bytes) => Position += bytes;

        public void Flush()
        {
            stream.Write(_buffer, 0, _used);
            _used = 0;
        }
    }
}
