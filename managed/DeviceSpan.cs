namespace Engine.Cuda;

/// <summary>
/// A typed view of device memory: <see cref="Length"/> elements of <typeparamref name="T"/> at
/// <see cref="Pointer"/>. What launchers take, so each can check its arguments' sizes before launching.
/// </summary>
public readonly unsafe record struct DeviceSpan<T>(IntPtr Pointer, long Length) where T : unmanaged
{
    public long Bytes => Length * sizeof(T);

    public bool IsEmpty => Length == 0;

    /// <summary>Elements <paramref name="start"/> .. <paramref name="start"/> + <paramref name="length"/>.</summary>
    public DeviceSpan<T> Slice(long start, long length)
    {
        if (start < 0 || length < 0 || start + length > Length)
            throw new ArgumentOutOfRangeException(nameof(start), $"slice [{start}, {start + length}) of a device span of {Length}");
        return new DeviceSpan<T>(Pointer + (nint)(start * sizeof(T)), length);
    }

    /// <summary>The same bytes seen as another element type (the length rounds down).</summary>
    public DeviceSpan<TOther> Cast<TOther>() where TOther : unmanaged => new(Pointer, Bytes / sizeof(TOther));

    public override string ToString() => $"{typeof(T).Name}[{Length}] @0x{Pointer:x}";
}

/// <summary>Device memory rented from a <see cref="GpuDevice"/>'s pool; disposing gives it back.</summary>
public sealed unsafe class GpuArray<T> : IDisposable where T : unmanaged
{
    private readonly DeviceMemoryPool _pool;
    private DeviceAllocation _allocation;

    internal GpuArray(DeviceMemoryPool pool, long length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        _pool = pool;
        _allocation = pool.Rent(checked(length * sizeof(T)));
        Length = length;
    }

    public long Length { get; }

    public DeviceSpan<T> Span
    {
        get
        {
            ObjectDisposedException.ThrowIf(_allocation.Pointer == IntPtr.Zero, this);
            return new DeviceSpan<T>(_allocation.Pointer, Length);
        }
    }

    public static implicit operator DeviceSpan<T>(GpuArray<T> array) => array.Span;

    public void Dispose()
    {
        _pool.Return(_allocation);
        _allocation = default;
    }
}
