using System.IO.MemoryMappedFiles;

namespace Engine.Formats;

/// <summary>
/// A read-only memory mapping of a whole file. Weights are used in place from this mapping: loading a
/// model copies nothing, and the OS pages in only what the forward pass touches.
/// </summary>
public sealed unsafe class MappedFile : IDisposable
{
    private readonly MemoryMappedFile _map;
    private readonly MemoryMappedViewAccessor _view;
    private byte* _pointer;

    private MappedFile(string path, MemoryMappedFile map, MemoryMappedViewAccessor view, long length)
    {
        Path = path;
        _map = map;
        _view = view;
        Length = length;
        byte* p = null;
        _view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        _pointer = p + _view.PointerOffset;
    }

    public string Path { get; }

    public long Length { get; }

    /// <summary>Start of the mapping; valid until <see cref="Dispose"/>.</summary>
    public byte* Pointer => _pointer != null ? _pointer : throw new ObjectDisposedException(Path);

    /// <summary>Maps <paramref name="path"/>; an empty or unreadable file is a <see cref="ModelFormatException"/>.</summary>
    public static MappedFile Open(string path)
    {
        if (!File.Exists(path))
            throw new FileNotFoundException($"{path}: no such file", path);
        FileInfo info = LinkedFile.Resolve(path); // a link's own length is not the model's
        if (info.Length == 0)
            throw new ModelFormatException(path, "file", "the file is empty (0 bytes)");
        var map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, mapName: null, 0, MemoryMappedFileAccess.Read);
        try
        {
            var view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            return new MappedFile(path, map, view, info.Length);
        }
        catch
        {
            map.Dispose();
            throw;
        }
    }

    /// <summary>Maps <paramref name="path"/> and hands the mapping to <paramref name="parse"/>, which owns it on success; on failure it is released.</summary>
    public static T OpenAndParse<T>(string path, Func<MappedFile, T> parse)
    {
        var file = Open(path);
        try
        {
            return parse(file);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    /// <summary>A span over [offset, offset+length); the caller has already checked the range.</summary>
    public ReadOnlySpan<byte> Span(long offset, int length)
    {
        if (offset < 0 || length < 0 || offset > Length - length)
            throw new ArgumentOutOfRangeException(nameof(offset), $"[{offset}, +{length}) is outside {Path} ({Length} bytes)");
        return new ReadOnlySpan<byte>(Pointer + offset, length);
    }

    public void Dispose()
    {
        if (_pointer == null)
            return;
        _pointer = null;
        _view.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _map.Dispose();
    }
}
