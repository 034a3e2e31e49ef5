
namespace Engine.Cuda;

/// <summary>
/// One CUDA device opened for use: its primary context (the one the runtime API and PyTorch share),
/// one stream all of our work is queued on, a memory pool, pinned staging memory, and the PTX modules
/// loaded on it (once each). Every driver call binds the context to the calling thread first
/// (<see cref="Bind"/>), since test runners and async code move work between threads. Devices are found
/// through ILGPU (<see cref="CudaDriver.Discover"/>); the context and everything after go through the
/// driver API directly (<see cref="Driver"/>), so nothing depends on ILGPU knowing the driver's version.
/// Not thread-safe: one thread drives a device at a time.
/// </summary>
public sealed unsafe class GpuDevice : IDisposable
{
    private const long StagingBytes = 16L << 20;
    private readonly Dictionary<string, IntPtr> _modules = [];
    private readonly Dictionary<(string, string), IntPtr> _functions = [];
    private PinnedBuffer? _staging;
    private bool _disposed;

    private GpuDevice(DeviceApi api, GpuInfo info)
    {
        Api = api;
        Info = info;
        Pool = new DeviceMemoryPool(api, () => Bind());
        using var _ = Bind();
        Stream = api.CreateStream();
    }

    internal DeviceApi Api { get; }

    /// <summary>Whether this is the host emulator of the kernels (<see cref="OpenEmulator"/>), not a GPU.</summary>
    public bool IsEmulator => Api.IsEmulator;

    public GpuInfo Info { get; }

    /// <summary>The stream every launch and copy of this device is queued on, in order.</summary>
    public IntPtr Stream { get; }

    /// <summary>Device memory of this device; weights, activations and the KV cache come from here.</summary>
    public DeviceMemoryPool Pool { get; }

    /// <summary>Kernel launches made so far (a decode step's count is what CUDA-graph capture saves).</summary>
    public long Launches { get; private set; }

    /// <summary>Opens device <paramref name="index"/>; throws <see cref="CudaException"/> with the reason when there is none.</summary>
    public static GpuDevice Open(int index = 0)
    {
        if (Environment.GetEnvironmentVariable(EmulatorVariable) == "1")
            return OpenEmulator();
        var devices = CudaDriver.Discover(out string reason);
        if (devices.Count == 0)
            throw new CudaException($"no CUDA device: {reason}");
        if (index < 0 || index >= devices.Count)
            throw new CudaException($"cuda:{index} does not exist (found {devices.Count} device(s): {string.Join("; ", devices)})");
        Driver.Check(Driver.DeviceGet(out int device, index));
        Driver.Check(Driver.DevicePrimaryCtxRetain(out IntPtr context, device));
        try
        {
            return new GpuDevice(new CudaApi(device, context), devices[index]);
        }
        catch
        {
            Driver.DevicePrimaryCtxRelease(device);
            throw;
        }
    }

    /// <summary>Set to 1, <see cref="Open"/> gives the kernel emulator instead of a GPU (tests, CI).</summary>
    public const string EmulatorVariable = "ENGINE_CUDA_EMULATOR";

    /// <summary>
    /// The kernels of kernels/*.cu compiled for the host and run by a fiber emulator of CUDA blocks,
    /// warps and barriers (kernels/host/simt.cpp, a test-only library): slow, exact in logic, no GPU
    /// needed. Everything above the kernels — launchers, pool, backend — runs as on a GPU.
    /// </summary>
    /// <param name="memoryLimit">Bytes of device memory the emulator pretends to have (0: unlimited).</param>
    public static GpuDevice OpenEmulator(long memoryLimit = 0)
    {
        if (!EmulatorApi.Available(out string reason))
            throw new CudaException(reason);
        ArgumentOutOfRangeException.ThrowIfNegative(memoryLimit);
        return new GpuDevice(new EmulatorApi(memoryLimit), new GpuInfo(0, "CUDA kernel emulator (host)", 9, 0, memoryLimit, 1));
    }

    /// <summary>(free, total) bytes of device memory now; (0, 0) where the device cannot tell (the emulator without a limit).</summary>
    public (long Free, long Total) MemoryInfo()
    {
        using var _ = Bind();
        return Api.MemoryInfo();
    }

    /// <summary>Whether the emulator can be opened here, with the reason when not.</summary>
    public static bool EmulatorAvailable(out string reason) => EmulatorApi.Available(out reason);

    /// <summary>Makes this device's context current on the calling thread until disposed (a no-op when it already is).</summary>
    public ContextScope Bind()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return Api.Bind();
    }

    /// <summary>The binding <see cref="Bind"/> returns: pushes the context if another (or none) is current, pops it on dispose.</summary>
    public readonly struct ContextScope : IDisposable
    {
        private readonly bool _pushed;

        internal ContextScope(IntPtr context)
        {
            if (context == IntPtr.Zero)
            {
                _pushed = false;
                return;
            }
            Driver.Check(Driver.CtxGetCurrent(out IntPtr current));
            _pushed = current != context;
            if (_pushed)
                Driver.Check(Driver.CtxPushCurrent(context));
        }

        public void Dispose()
        {
            if (_pushed)
                Driver.CtxPopCurrent(out _);
        }
    }

    /// <summary>Device memory for <paramref name="length"/> elements from the pool (contents undefined).</summary>
    public GpuArray<T> Allocate<T>(long length) where T : unmanaged => new(Pool, length);

    /// <summary>A device array holding a copy of <paramref name="data"/>.</summary>
    public GpuArray<T> Upload<T>(ReadOnlySpan<T> data) where T : unmanaged
    {
        var array = Allocate<T>(data.Length);
        CopyToDevice(data, array.Span);
        return array;
    }

    /// <summary>Page-locked host memory of <paramref name="bytes"/> bytes for asynchronous copies (a driver allocation, counted).</summary>
    public PinnedBuffer AllocatePinned(long bytes)
    {
        PinnedAllocations++;
        return new(Api, () => Bind(), bytes);
    }

    /// <summary>cuMemAllocHost calls made so far (device allocations are counted by <see cref="Pool"/>).</summary>
    public long PinnedAllocations { get; private set; }

    /// <summary>
    /// Copies host data to the device through pinned staging, in order with the work queued before;
    /// returns when <paramref name="source"/> may be reused.
    /// </summary>
    public void CopyToDevice<T>(ReadOnlySpan<T> source, DeviceSpan<T> destination) where T : unmanaged
    {
        if (destination.Length < source.Length)
            throw new ArgumentException($"copying {source.Length} elements into a device span of {destination.Length}");
        var bytes = System.Runtime.InteropServices.MemoryMarshal.AsBytes(source);
        using var _ = Bind();
        var staging = _staging ??= AllocatePinned(StagingBytes);
        for (long offset = 0; offset < bytes.Length; offset += StagingBytes)
        {
            int count = (int)Math.Min(StagingBytes, bytes.Length - offset);
            bytes.Slice((int)offset, count).CopyTo(staging.AsSpan<byte>(count));
            Api.CopyToDevice(destination.Pointer + (nint)offset, (void*)staging.Pointer, count, Stream);
            Api.SynchronizeStream(Stream); // the staging buffer is reused by the next chunk
        }
    }

    /// <summary>Copies device data to the host after the work queued before it.</summary>
    public void CopyToHost<T>(DeviceSpan<T> source, Span<T> destination) where T : unmanaged
    {
        if (destination.Length < source.Length)
            throw new ArgumentException($"copying {source.Length} device elements into a host span of {destination.Length}");
        var bytes = System.Runtime.InteropServices.MemoryMarshal.AsBytes(destination[..checked((int)source.Length)]);
        using var _ = Bind();
        var staging = _staging ??= AllocatePinned(StagingBytes);
        for (long offset = 0; offset < bytes.Length; offset += StagingBytes)
        {
            int count = (int)Math.Min(StagingBytes, bytes.Length - offset);
            Api.CopyToHost((void*)staging.Pointer, source.Pointer + (nint)offset, count, Stream);
            Api.SynchronizeStream(Stream);
            staging.AsSpan<byte>(count).CopyTo(bytes.Slice((int)offset, count));
        }
    }

    /// <summary>The device array's contents as a host array.</summary>
    public T[] Download<T>(DeviceSpan<T> source) where T : unmanaged
    {
        var data = new T[source.Length];
        CopyToHost(source, data);
        return data;
    }

    /// <summary>Queues a device-to-device copy of <paramref name="bytes"/> bytes.</summary>
    public void CopyDeviceToDevice(IntPtr destination, IntPtr source, long bytes)
    {
        using var _ = Bind();
        Api.CopyOnDevice(destination, source, bytes, Stream);
    }

    /// <summary>Queues setting <paramref name="bytes"/> bytes to zero.</summary>
    public void Clear(IntPtr destination, long bytes)
    {
        using var _ = Bind();
        Api.Clear(destination, bytes, Stream);
    }

    /// <summary>Waits for everything queued on the stream; errors of earlier launches surface here.</summary>
    public void Synchronize()
    {
        using var _ = Bind();
        Api.SynchronizeStream(Stream);
    }

    /// <summary>A device attribute (CU_DEVICE_ATTRIBUTE_*).</summary>
    public int Attribute(int attribute)
    {
        using var _ = Bind();
        return Api.Attribute(attribute);
    }

    /// <summary>
    /// Theoretical peak memory bandwidth in bytes/s from the device's own attributes: memory clock
    /// (kHz) × 2 (double data rate) × bus width (bits) / 8.
    /// </summary>
    public double PeakBandwidth =>
        Attribute(Driver.CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE) * 1e3 * 2 * Attribute(Driver.CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH) / 8;

    /// <summary>
    /// Peak float32 FMA throughput in FLOP/s: SMs × FP32 lanes per SM (by architecture, as CUDA's
    /// samples tabulate it) × 2 × SM clock.
    /// </summary>
    public double PeakFlops
    {
        get
        {
            int lanes = (Info.Major, Info.Minor) switch
            {
                (7, _) => 64,
                (8, 0) => 64,
                (8, _) => 128,
                (9, _) => 128,
                _ => 128,
            };
            return (double)Info.Multiprocessors * lanes * 2 * Attribute(Driver.CU_DEVICE_ATTRIBUTE_CLOCK_RATE) * 1e3;
        }
    }

    /// <summary>The function <paramref name="kernel"/> of kernels/<paramref name="kernelFile"/>.cu, loading its PTX once.</summary>
    public IntPtr Function(string kernelFile, string kernel)
    {
        if (_functions.TryGetValue((kernelFile, kernel), out IntPtr fn))
            return fn;
        using var _ = Bind();
        if (!_modules.TryGetValue(kernelFile, out IntPtr module))
        {
            var (source, ptx) = Api.IsEmulator ? ("the emulator", "") : PtxModules.Select(kernelFile, Info.Major, Info.Minor);
            _modules[kernelFile] = module = Api.LoadModule(source, ptx);
        }
        fn = Api.Function(module, kernel);
        if (fn == IntPtr.Zero)
            throw new CudaException($"kernels/{kernelFile}.cu has no kernel {kernel}");
        _functions[(kernelFile, kernel)] = fn;
        return fn;
    }

    /// <summary>Queues a kernel on <see cref="Stream"/>; <paramref name="args"/> holds one pointer per kernel parameter.</summary>
    public void Launch(IntPtr function, (int X, int Y, int Z) grid, (int X, int Y, int Z) block, int sharedBytes, void** args)
    {
        if (grid.X <= 0 || grid.Y <= 0 || grid.Z <= 0 || block.X <= 0 || block.Y <= 0 || block.Z <= 0)
            throw new ArgumentOutOfRangeException(nameof(grid), $"launch of grid {grid} and block {block}: every dimension must be positive");
        if (grid.Y > 65535 || grid.Z > 65535)
            throw new ArgumentOutOfRangeException(nameof(grid), $"grid {grid}: y and z are limited to 65535");
        using var _ = Bind();
        Api.Launch(function, grid, block, sharedBytes, Stream, args);
        Launches++;
    }

    public void Dispose()
    {
        if (_disposed)
            return;
        using (Bind())
        {
            Api.SynchronizeStream(Stream);
            foreach (IntPtr module in _modules.Values)
                Api.UnloadModule(module);
            _staging?.Dispose();
            Pool.Dispose();
            Api.DestroyStream(Stream);
        }
        _disposed = true;
        _modules.Clear();
        _functions.Clear();
        Api.Release();
    }
}

/// <summary>Times work on a device's stream with CUDA events (what kernels-bench reports).</summary>
public sealed class GpuTimer : IDisposable
{
    private readonly GpuDevice _device;
    private readonly IntPtr _start, _stop;

    public GpuTimer(GpuDevice device)
    {
        _device = device;
        using var _ = device.Bind();
        _start = device.Api.CreateEvent(timing: true);
        _stop = device.Api.CreateEvent(timing: true);
    }

    public void Start()
    {
        using var _ = _device.Bind();
        _device.Api.RecordEvent(_start, _device.Stream);
    }

    /// <summary>Records the end and waits for it; returns the milliseconds between the two events.</summary>
    public float Stop()
    {
        using var _ = _device.Bind();
        _device.Api.RecordEvent(_stop, _device.Stream);
        _device.Api.SynchronizeEvent(_stop);
        return _device.Api.ElapsedMilliseconds(_start, _stop);
    }

    public void Dispose()
    {
        using var _ = _device.Bind();
        _device.Api.DestroyEvent(_start);
        _device.Api.DestroyEvent(_stop);
    }
}
