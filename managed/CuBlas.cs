using System.Runtime.InteropServices;

namespace Engine.Cuda;

/// <summary>
/// cuBLAS for the prefill matrix products: <c>cublasGemmEx</c> with F16 inputs and float32 output and
/// accumulation (ILGPU.Algorithms' wrapper has no half-precision GEMM). Loaded on first use from
/// libcublas.so (.13/.12/.11, or ENGINE_CUBLAS naming a file); where it is absent the CUDA backend
/// multiplies batches with its own gemv kernels instead, and says so in <see cref="Status"/>.
/// </summary>
public sealed unsafe partial class CuBlas : IDisposable
{
    internal const string Lib = "cublas";
    private const int CUBLAS_OP_N = 0, CUBLAS_OP_T = 1;
    private const int CUDA_R_16F = 2, CUDA_R_32F = 0;
    private const int CUBLAS_COMPUTE_32F = 68;
    private const int CUBLAS_GEMM_DEFAULT = -1;

    private readonly GpuDevice _device;
    private IntPtr _handle;

    private CuBlas(GpuDevice device, IntPtr handle)
    {
        _device = device;
        _handle = handle;
    }

    /// <summary>Why the last <see cref="TryCreate"/> gave null, or the library it loaded.</summary>
    public static string Status { get; private set; } = "not loaded";

    /// <summary>A cuBLAS handle bound to the device's stream, or null (with <see cref="Status"/> saying why).</summary>
    public static CuBlas? TryCreate(GpuDevice device)
    {
        if (device.IsEmulator)
        {
            Status = "the kernel emulator has no cuBLAS";
            return null;
        }
        CudaDriver.RegisterLibcudaFallback();
        try
        {
            using var _ = device.Bind();
            int result = Create(out IntPtr handle);
            if (result != 0)
            {
                Status = $"cublasCreate failed with status {result}";
                return null;
            }
            result = SetStream(handle, device.Stream);
            if (result != 0)
            {
                Destroy(handle);
                Status = $"cublasSetStream failed with status {result}";
                return null;
            }
            Status = "loaded";
            return new CuBlas(device, handle);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            Status = $"cuBLAS could not be loaded ({e.Message.Split('\n')[0]})";
            return null;
        }
    }

    /// <summary>
    /// y[n, m] = x[n, k] · w[m, k]ᵀ (all row-major; x and w F16, y float32). In cuBLAS's column-major
    /// terms that is yᵀ = op(w)·xᵀ with w seen as a k×m matrix transposed.
    /// </summary>
    public void GemmF16(DeviceSpan<Half> w, int m, int k, DeviceSpan<Half> x, int n, DeviceSpan<float> y)
    {
        if (w.Length < (long)m * k || x.Length < (long)n * k || y.Length < (long)n * m)
            throw new ArgumentException($"cublasGemmEx: w {w.Length} for [{m}, {k}], x {x.Length} for [{n}, {k}], y {y.Length} for [{n}, {m}]");
        float alpha = 1, beta = 0;
        using var _ = _device.Bind();
        int status = GemmEx(_handle, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, w.Pointer, CUDA_R_16F, k, x.Pointer, CUDA_R_16F, k,
            &beta, y.Pointer, CUDA_R_32F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        if (status != 0)
            throw new CudaException($"cublasGemmEx([{n}, {k}] · [{m}, {k}]ᵀ) failed with status {status}");
    }

    public void Dispose()
    {
        if (_handle == IntPtr.Zero)
            return;
        using (_device.Bind())
            Destroy(_handle);
        _handle = IntPtr.Zero;
    }

    /// <summary>Finds libcublas for this assembly's imports (registered by <see cref="CudaDriver.RegisterLibcudaFallback"/>).</summary>
    internal static IntPtr Resolve()
    {
        var candidates = new List<string>();
        if (Environment.GetEnvironmentVariable("ENGINE_CUBLAS") is { Length: > 0 } explicitPath)
            candidates.Add(explicitPath);
        candidates.AddRange(["libcublas.so", "libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "cublas64_13.dll", "cublas64_12.dll", "cublas64_11.dll"]);
        foreach (string candidate in candidates)
        {
            if (NativeLibrary.TryLoad(candidate, out IntPtr handle))
                return handle;
        }
        return IntPtr.Zero;
    }

    [LibraryImport(Lib, EntryPoint = "cublasCreate_v2")]
    private static partial int Create(out IntPtr handle);

    [LibraryImport(Lib, EntryPoint = "cublasDestroy_v2")]
    private static partial int Destroy(IntPtr handle);

    [LibraryImport(Lib, EntryPoint = "cublasSetStream_v2")]
    private static partial int SetStream(IntPtr handle, IntPtr stream);

    [LibraryImport(Lib, EntryPoint = "cublasGemmEx")]
    private static partial int GemmEx(IntPtr handle, int transa, int transb, int m, int n, int k, void* alpha, IntPtr a, int aType, int lda,
        IntPtr b, int bType, int ldb, void* beta, IntPtr c, int cType, int ldc, int computeType, int algo);
}
