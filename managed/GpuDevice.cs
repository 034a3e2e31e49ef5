using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace Engine.Cuda;

/// <summary>
/// One CUDA device opened for use: an ILGPU CUDA accelerator (its context), the PTX modules loaded on
/// it (once each), and device memory. Every raw driver call binds the accelerator's context to the
/// calling thread first, since test runners and async code move work between threads.
/// </summary>
public sealed class GpuDevice : IDisposable
{
    private readonly Context _context;
    private readonly CudaAccelerator _accelerator;
    private readonly Dictionary<string, IntPtr> _modules = [];
    private readonly Dictionary<(string, string), IntPtr> _functions = [];

    private GpuDevice(Context context, CudaAccelerator accelerator, GpuInfo info)
    {
        _context = context;
        _accelerator = accelerator;
        Info = info;
    }

    public GpuInfo Info { get; }

    /// <summary>Opens device <paramref name="index"/>; throws <see cref="CudaException"/> with the reason when there is none.</summary>
    public static GpuDevice Open(int index = 0)
    {
        var devices = CudaDriver.Discover(out string reason);
        if (devices.Count == 0)
            throw new CudaException($"no CUDA device: {reason}");
        if (index < 0 || index >= devices.Count)
            throw new CudaException($"cuda:{index} does not exist (found {devices.Count} device(s))");
        var context = Context.Create(b => b.Cuda());
        try
        {
            var accelerator = context.CreateCudaAccelerator(index);
            return new GpuDevice(context, accelerator, devices[index]);
        }
        catch
        {
            context.Dispose();
            throw;
        }
    }

    /// <summary>Binds this device's context to the current thread until disposed.</summary>
    public ScopedAcceleratorBinding Bind() => _accelerator.BindScoped();

    /// <summary>A float32 device array of <paramref name="length"/> elements.</summary>
    public MemoryBuffer1D<float, Stride1D.Dense> Allocate(long length) => _accelerator.Allocate1D<float>(length);

    /// <summary>A device array holding a copy of <paramref name="data"/>.</summary>
    public MemoryBuffer1D<float, Stride1D.Dense> Upload(float[] data) => _accelerator.Allocate1D(data);

    /// <summary>Copies a device array back to the host (after the work queued before it).</summary>
    public float[] Download(MemoryBuffer1D<float, Stride1D.Dense> buffer)
    {
        using var _ = Bind();
        return buffer.GetAsArray1D();
    }

    /// <summary>Waits for all work on the device; launch errors surface here.</summary>
    public void Synchronize()
    {
        using var _ = Bind();
        CudaCheck.ThrowIfFailed(CudaAPI.CurrentAPI.SynchronizeContext());
    }

    /// <summary>The function <paramref name="kernel"/> of kernels/<paramref name="kernelFile"/>.cu, loading its PTX once.</summary>
    public IntPtr Function(string kernelFile, string kernel)
    {
        if (_functions.TryGetValue((kernelFile, kernel), out IntPtr fn))
            return fn;
        using var _ = Bind();
        if (!_modules.TryGetValue(kernelFile, out IntPtr module))
        {
            var (source, ptx) = PtxModules.Select(kernelFile, Info.Major, Info.Minor);
            var error = CudaAPI.CurrentAPI.LoadModule(out module, ptx, out string? log);
            if (error != CudaError.CUDA_SUCCESS)
                throw new CudaException($"loading PTX {source} failed: {error}{(string.IsNullOrWhiteSpace(log) ? "" : ": " + log.Trim())}");
            _modules[kernelFile] = module;
        }
        CudaCheck.ThrowIfFailed(CudaAPI.CurrentAPI.GetModuleFunction(out fn, module, kernel));
        _functions[(kernelFile, kernel)] = fn;
        return fn;
    }

    /// <summary>Launches a kernel on the default stream; <paramref name="args"/> holds one pointer per kernel parameter.</summary>
    public unsafe void Launch(IntPtr function, (int X, int Y, int Z) grid, (int X, int Y, int Z) block, int sharedBytes, void** args)
    {
        using var _ = Bind();
        CudaCheck.ThrowIfFailed(CudaAPI.CurrentAPI.LaunchKernel(function, grid.X, grid.Y, grid.Z, block.X, block.Y, block.Z,
            sharedBytes, IntPtr.Zero, (IntPtr)args, IntPtr.Zero));
    }

    public void Dispose()
    {
        using (Bind())
        {
            foreach (IntPtr module in _modules.Values)
                CudaAPI.CurrentAPI.DestroyModule(module);
        }
        _modules.Clear();
        _functions.Clear();
        _accelerator.Dispose();
        _context.Dispose();
    }
}
