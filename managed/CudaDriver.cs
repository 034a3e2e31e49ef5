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

    /// <summary>
    /// The CUDA devices of this machine, or an empty list with <paramref name="reason"/> saying why.
    /// ILGPU lists them; the compute capability comes from the driver's own attributes (ILGPU reports
    /// none for architectures newer than it knows). Should ILGPU fail on a driver it does not know,
    /// the driver API lists the devices instead.
    /// </summary>
    public static IReadOnlyList<GpuInfo> Discover(out string reason)
    {
        RegisterLibcudaFallback();
        string ilgpuProblem;
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
                var (major, minor) = ComputeCapability(i) ?? (d.Architecture?.Major ?? 0, d.Architecture?.Minor ?? 0);
                infos.Add(new GpuInfo(i, d.Name, major, minor, d.MemorySize, d.NumMultiprocessors));
            }
            return infos;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or TypeInitializationException or InvalidOperationException
                                     or NotSupportedException or CudaException)
        {
            ilgpuProblem = e.Message;
        }
        try
        {
            return DiscoverWithDriver(out reason);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or CudaException)
        {
            reason = $"the CUDA driver could not be initialized: {ilgpuProblem}; {e.Message}";
            return [];
        }
    }

    private static (int, int)? ComputeCapability(int ordinal)
    {
        try
        {
            if (Driver.Init(0) != 0 || Driver.DeviceGet(out int device, ordinal) != 0)
                return null;
            if (Driver.DeviceGetAttribute(out int major, Driver.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device) != 0
                || Driver.DeviceGetAttribute(out int minor, Driver.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device) != 0)
                return null;
            return (major, minor);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return null;
        }
    }

    private static unsafe IReadOnlyList<GpuInfo> DiscoverWithDriver(out string reason)
    {
        int init = Driver.Init(0);
        if (init != 0)
        {
            reason = $"cuInit failed: {Driver.ErrorName(init)}";
            return [];
        }
        Driver.Check(Driver.DeviceGetCount(out int count));
        if (count == 0)
        {
            reason = "the CUDA driver reports no device";
            return [];
        }
        var infos = new List<GpuInfo>(count);
        byte* name = stackalloc byte[256];
        for (int i = 0; i < count; i++)
        {
            Driver.Check(Driver.DeviceGet(out int device, i));
            Driver.Check(Driver.DeviceGetName(name, 256, device));
            Driver.Check(Driver.DeviceTotalMem(out nuint bytes, device));
            Driver.Check(Driver.DeviceGetAttribute(out int major, Driver.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device));
            Driver.Check(Driver.DeviceGetAttribute(out int minor, Driver.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device));
            Driver.Check(Driver.DeviceGetAttribute(out int sms, Driver.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, device));
            infos.Add(new GpuInfo(i, Marshal.PtrToStringAnsi((IntPtr)name) ?? "?", major, minor, (long)bytes, sms));
        }
        reason = "";
        return infos;
    }
}
