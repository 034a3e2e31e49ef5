using Engine.Backends;
using Engine.Backends.Cpu;

namespace Engine.Cuda;

/// <summary>
/// Turns a device name — <c>cpu</c>, <c>cuda</c>, <c>cuda:N</c> or <c>auto</c> — into a backend.
/// <c>auto</c> takes CUDA device 0 when a device and a usable driver exist, else the CPU.
/// </summary>
public static class BackendFactory
{
    public const string Help = "cpu, cuda, cuda:N or auto (CUDA when a device is present, else the CPU)";

    /// <summary>The backend for <paramref name="device"/>; <paramref name="threads"/> is for the CPU (0 = one per core).</summary>
    /// <exception cref="ArgumentException">The name is not one of the forms above.</exception>
    /// <exception cref="CudaException">CUDA was asked for and is not available, with the reason.</exception>
    /// <param name="cudaGraphs">On CUDA, replay one-token passes as CUDA graphs (<see cref="CudaBackend"/>).</param>
    /// <param name="kvCacheType">The KV cache's elements: F32, F16 (half the memory and half the bytes attention reads each
    /// step) or, on the CPU, Q8_0 (a quarter, plus a scale per head vector); null for the device's default — F16 on CUDA, F32 (exact) on the CPU.</param>
    public static Backend Create(string device, int threads = 0, bool cudaGraphs = false, Tensors.GgmlType? kvCacheType = null)
    {
        string d = device.Trim().ToLowerInvariant();
        bool cuda = d switch
        {
            "cpu" => false,
            "auto" => CudaDriver.Discover(out _).Count > 0,
            "cuda" => true,
            _ when d.StartsWith("cuda:", StringComparison.Ordinal) => true,
            _ => throw new ArgumentException($"--device {device}: expected {Help}"),
        };
        if (!cuda)
        {
            if (kvCacheType is { } t && t is not (Tensors.GgmlType.F32 or Tensors.GgmlType.F16 or Tensors.GgmlType.Q8_0))
                throw new ArgumentException($"--cache-type {t.ToString().ToLowerInvariant()}: expected f32, f16 or q8_0");
            return new CpuBackend(threads, kvCacheType: kvCacheType ?? Tensors.GgmlType.F32);
        }
        int index = 0;
        if (d.StartsWith("cuda:", StringComparison.Ordinal) && !int.TryParse(d.AsSpan(5), System.Globalization.NumberStyles.None,
                System.Globalization.CultureInfo.InvariantCulture, out index))
            throw new ArgumentException($"--device {device}: expected {Help}");
        return CudaBackend.Open(index, cudaGraphs: cudaGraphs, kvCacheType: kvCacheType ?? Tensors.GgmlType.F16);
    }
}
