namespace Engine.Cuda;

/// <summary>A piece of device memory: its address and size in bytes.</summary>
public readonly record struct DeviceAllocation(IntPtr Pointer, long Bytes);

/// <summary>
/// Device memory in size classes, reused: a returned allocation goes to its class's free list and the
/// next request of that class takes it back without a driver call. Classes are powers of two from
/// 256 bytes to 64 MiB and exact sizes above (weights, the KV cache, which are allocated once). So a
/// decode loop, whose buffers have the same sizes every step, stops calling the driver after its first
/// step — <see cref="DriverAllocations"/> counts the calls, and a test holds it still.
/// </summary>
public sealed class DeviceMemoryPool : IDisposable
{
    private const long MinClass = 256;
    private const long MaxClass = 64L << 20;
    private readonly Dictionary<long, Stack<IntPtr>> _free = [];
    private readonly List<DeviceAllocation> _all = [];
    private readonly DeviceApi _api;
    private readonly Func<IDisposable> _bind;

    internal DeviceMemoryPool(DeviceApi api, Func<IDisposable> bind)
    {
        _api = api;
        _bind = bind;
    }

    /// <summary>cuMemAlloc calls made so far.</summary>
    public long DriverAllocations { get; private set; }

    /// <summary>Bytes held from the driver (in use or free in the pool).</summary>
    public long ReservedBytes { get; private set; }

    /// <summary>The size class a request of <paramref name="bytes"/> is served from.</summary>
    public static long ClassOf(long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        if (bytes > MaxClass)
            return (bytes + MinClass - 1) / MinClass * MinClass;
        long size = MinClass;
        while (size < bytes)
            size <<= 1;
        return size;
    }

    /// <summary>At least <paramref name="bytes"/> bytes (256-byte aligned), from the pool when it has a free piece of the class.</summary>
    public DeviceAllocation Rent(long bytes)
    {
        long size = ClassOf(Math.Max(bytes, 1));
        if (_free.TryGetValue(size, out var stack) && stack.Count > 0)
            return new DeviceAllocation(stack.Pop(), size);
        using var _ = _bind();
        IntPtr pointer;
        try
        {
            pointer = _api.Alloc(size);
        }
        catch (CudaException) when (Trim() > 0)
        {
            // Blocks of other sizes sat idle in the pool: given back, the driver may now have room.
            try
            {
                pointer = _api.Alloc(size);
            }
            catch (CudaException e)
            {
                throw new CudaException($"{e.Message}, {ReservedBytes >> 20} MiB held by this pool");
            }
        }
        catch (CudaException e)
        {
            throw new CudaException($"{e.Message}, {ReservedBytes >> 20} MiB held by this pool");
        }
        DriverAllocations++;
        ReservedBytes += size;
        _all.Add(new DeviceAllocation(pointer, size));
        return new DeviceAllocation(pointer, size);
    }

    /// <summary>Gives an allocation back to its class for reuse (the memory stays with the pool).</summary>
    public void Return(DeviceAllocation allocation)
    {
        if (allocation.Pointer == IntPtr.Zero)
            return;
        if (!_free.TryGetValue(allocation.Bytes, out var stack))
            _free[allocation.Bytes] = stack = new Stack<IntPtr>();
        stack.Push(allocation.Pointer);
    }

    /// <summary>
    /// Frees the allocations waiting for reuse, returning their memory to the driver; returns the bytes
    /// freed. Called when an allocation fails, and when a backend is disposed (a model unloaded, or a
    /// load that failed halfway), so that memory a model no longer uses is free for anyone.
    /// </summary>
    public long Trim()
    {
        long freed = 0;
        var idle = new HashSet<IntPtr>();
        foreach (var stack in _free.Values)
            idle.UnionWith(stack);
        if (idle.Count == 0)
            return 0;
        using (_bind())
        {
            foreach (var a in _all)
            {
                if (idle.Contains(a.Pointer))
                {
                    _api.Free(a.Pointer);
                    freed += a.Bytes;
                }
            }
        }
        _all.RemoveAll(a => idle.Contains(a.Pointer));
        _free.Clear();
        ReservedBytes -= freed;
        return freed;
    }

    /// <summary>Frees every allocation the pool ever made (the device must be idle).</summary>
    public void Dispose()
    {
        using (_bind())
        {
            foreach (var a in _all)
                _api.Free(a.Pointer);
        }
        _all.Clear();
        _free.Clear();
        ReservedBytes = 0;
    }
}

/// <summary>
/// Page-locked host memory: the driver copies it to and from the device asynchronously (pageable
/// memory forces a synchronous staging copy). Used for uploads of per-step inputs and downloads.
/// </summary>
public sealed unsafe class PinnedBuffer : IDisposable
{
    private readonly DeviceApi _api;
    private readonly Func<IDisposable> _bind;

    internal PinnedBuffer(DeviceApi api, Func<IDisposable> bind, long bytes)
    {
        _api = api;
        _bind = bind;
        using var _ = bind();
        Pointer = api.AllocHost(Math.Max(bytes, 16));
        Bytes = bytes;
    }

    public IntPtr Pointer { get; private set; }

    public long Bytes { get; }

    public Span<T> AsSpan<T>(int count) where T : unmanaged
    {
        if ((long)count * sizeof(T) > Bytes)
            throw new ArgumentOutOfRangeException(nameof(count), $"{count} × {sizeof(T)} bytes exceed the pinned buffer's {Bytes}");
        return new Span<T>((void*)Pointer, count);
    }

    public void Dispose()
    {
        if (Pointer == IntPtr.Zero)
            return;
        using (_bind())
            _api.FreeHost(Pointer);
        Pointer = IntPtr.Zero;
    }
}
