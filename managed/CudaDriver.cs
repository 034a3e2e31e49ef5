using System.Reflection;
using System.Runtime.InteropServices;
using System.Runtime.Loader;
using ILGPU;
using ILGPU.Runtime.Cuda;

namespace Engine.Cuda;

/// <summary>A CUDA device as the driver reports it.</summary>
public sealed record GpuInfo(int Index, string Name, int Major, int Minor, long MemoryBytes, int Multiprocessors)
{
    public string ComputeCapability => $"{Major}.{Minor}";

    public override string ToString() => $"cuda:{Index} {Name} (sm_{Major}{Minor}, {MemoryBytes / (1 << 20)} MiB, {Multiprocessors} SMs)";
}

/// <summary>
/// Finds CUDA devices through ILGPU's driver binding. A machine without a driver or a GPU is reported
/// as a reason string, never as a crash: the CPU backend is the default everywhere.
/// </summary>
public static class CudaDriver
{
    private static int s_resolverInstalled;

    /// <summary>
    /// ILGPU imports the driver as "cuda", which .NET resolves only as libcuda.so; many machines ship only
    /// libcuda.so.1. Must run before the first ILGPU call.
    /// </summary>
    public static void RegisterLibcudaFallback()
    {
        if (Interlocked.Exchange(ref s_resolverInstalled, 1) != 0)
            return;
        AssemblyLoadContext.Default.ResolvingUnmanagedDll += Resolve;
        NativeLibrary.SetDllImportResolver(typeof(CudaDriver).Assembly,
            (name, _, _) => name == CuBlas.Lib ? CuBlas.Resolve() : IntPtr.Zero);
    }

    private static IntPtr Resolve(Assembly assembly, string name)
    {
        if (name != "cuda" && name != "nvcuda")
            return IntPtr.Zero;
        foreach (string candidate in new[] { "libcuda.so.1", "libcuda.so", "nvcuda.dll" })
        {
            if (NativeLibrary.TryLoad(candidate, out IntPtr handle))
                return handle;
        }
        return IntPtr.Zero;
    }

    /// <summary>The CUDA devices of this machine, or an empty list with <paramref name="reason"/> saying why.</summary>
    public static IReadOnlyList<GpuInfo> Discover(out string reason)
    {
        RegisterLibcudaFallback();
        try
        {
            using var context = Context.Create(b => b.Cuda());
            var devices = context.GetCudaDevices();
            if (devices.Count == 0)
            {
                reason = CudaAPI.CurrentAPI.IsSupported
                    ? "the CUDA driver reports no device"
                    : "no CUDA driver (libcuda) could be loaded on this machine";
                return [];
            }
            reason = "";
            var infos = new List<GpuInfo>(devices.Count);
            for (int i = 0; i < devices.Count; i++)
            {
                var d = devices[i];
                infos.Add(new GpuInfo(i, d.Name, d.Architecture?.Major ?? 0, d.Architecture?.Minor ?? 0, d.MemorySize, d.NumMultiprocessors));
            }
            return infos;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or TypeInitializationException or InvalidOperationException or NotSupportedException)
        {
            reason = $"the CUDA driver could not be initialized: {e.Message}";
            return [];
        }
    }
}
