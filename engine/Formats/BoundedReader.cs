using System.Buffers.Binary;
using System.Text;

namespace Engine.Formats;

/// <summary>
/// Little-endian reads from a mapped file where every read is checked against the end of the file
/// first, so a truncated or lying header becomes a <see cref="ModelFormatException"/> that names the
/// field being read, never an access violation or a huge allocation.
/// </summary>
internal sealed unsafe class BoundedReader
{
    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);
    private readonly byte* _base;

    public BoundedReader(MappedFile file)
    {
        _base = file.Pointer;
        Length = file.Length;
        File = file.Path;
    }

    public string File { get; }

    public long Length { get; }

    public long Position { get; set; }

    public long Remaining => Length - Position;

    public void Require(long bytes, string field)
    {
        if (bytes < 0 || bytes > Remaining)
            throw new ModelFormatException(File, field, $"needs {bytes} bytes at offset {Position}, but the file ends after {Remaining} more (truncated or corrupt)");
    }

    public byte ReadU8(string field)
    {
        Require(1, field);
        return _base[Position++];
    }

    public ushort ReadU16(string field) => BinaryPrimitives.ReadUInt16LittleEndian(Take(2, field));

    public uint ReadU32(string field) => BinaryPrimitives.ReadUInt32LittleEndian(Take(4, field));

    public ulong ReadU64(string field) => BinaryPrimitives.ReadUInt64LittleEndian(Take(8, field));

    public float ReadF32(string field) => BinaryPrimitives.ReadSingleLittleEndian(Take(4, field));

    public double ReadF64(string field) => BinaryPrimitives.ReadDoubleLittleEndian(Take(8, field));

    /// <summary>A count that must fit in the remaining bytes when each item takes at least <paramref name="minItemBytes"/>.</summary>
    public int ReadCount(string field, int minItemBytes, bool wide = true)
    {
        ulong n = wide ? ReadU64(field) : ReadU32(field);
        if (n > int.MaxValue || (long)n * minItemBytes > Remaining)
            throw new ModelFormatException(File, field, $"count {n} cannot fit in the {Remaining} bytes left in the file");
        return (int)n;
    }

    /// <summary>A length-prefixed UTF-8 string (u64 length in GGUF v2/v3).</summary>
    public string ReadString(string field)
    {
        ulong n = ReadU64(field + " (string length)");
        if (n > (ulong)Remaining)
            throw new ModelFormatException(File, field, $"string length {n} exceeds the {Remaining} bytes left in the file");
        if (n > int.MaxValue)
            throw new ModelFormatException(File, field, $"string length {n} exceeds 2 GiB");
        var bytes = Take((int)n, field);
        try
        {
            return StrictUtf8.GetString(bytes);
        }
        catch (DecoderFallbackException)
        {
            // Vocabularies can carry partial UTF-8 sequences as tokens; keep them readable rather than fail.
            return Encoding.UTF8.GetString(bytes);
        }
    }

    public ReadOnlySpan<byte> Take(int n, string field)
    {
        Require(n, field);
        var span = new ReadOnlySpan<byte>(_base + Position, n);
        Position += n;
        return span;
    }
}
