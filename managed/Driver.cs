using System.Runtime.InteropServices;

namespace Engine.Cuda;

/// <summary>
/// The CUDA driver API as the runtime uses it (contexts, modules, memory, copies, streams, events,
/// attributes, launches), bound with <c>LibraryImport</c>. ILGPU finds the devices
/// (<see cref="CudaDriver.Discover"/>); everything after runs through these calls, in the device's
/// primary context bound to the calling thread by <see cref="GpuDevice.Bind"/>.
/// The library name "cuda" resolves to libcuda.so.1 through <see cref="CudaDriver.RegisterLibcudaFallback"/>.
/// Every function returns a CUresult; <see cref="Check"/> turns failures into <see cref="CudaException"/>.
/// </summary>
internal static unsafe partial class Driver
{
    private const string Lib = "cuda";

    public const int CU_DEVICE_ATTRIBUTE_CLOCK_RATE = 13;
    public const int CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE = 36;
    public const int CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH = 37;
    public const int CU_STREAM_NON_BLOCKING = 1;
    public const int CU_EVENT_DEFAULT = 0;
    public const int CU_EVENT_DISABLE_TIMING = 2;
    public const int CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16;
    public const int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75;
    public const int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76;
    public const int CU_JIT_ERROR_LOG_BUFFER = 5;
    public const int CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES = 6;

    [LibraryImport(Lib, EntryPoint = "cuInit")]
    public static partial int Init(uint flags);

    [LibraryImport(Lib, EntryPoint = "cuDriverGetVersion")]
    public static partial int DriverGetVersion(out int version);

    [LibraryImport(Lib, EntryPoint = "cuDeviceGetCount")]
    public static partial int DeviceGetCount(out int count);

    [LibraryImport(Lib, EntryPoint = "cuDeviceGet")]
    public static partial int DeviceGet(out int device, int ordinal);

    [LibraryImport(Lib, EntryPoint = "cuDeviceGetName")]
    public static partial int DeviceGetName(byte* name, int length, int device);

    [LibraryImport(Lib, EntryPoint = "cuDeviceTotalMem_v2")]
    public static partial int DeviceTotalMem(out nuint bytes, int device);

    [LibraryImport(Lib, EntryPoint = "cuDevicePrimaryCtxRetain")]
    public static partial int DevicePrimaryCtxRetain(out IntPtr context, int device);

    [LibraryImport(Lib, EntryPoint = "cuDevicePrimaryCtxRelease_v2")]
    public static partial int DevicePrimaryCtxRelease(int device);

    [LibraryImport(Lib, EntryPoint = "cuCtxGetCurrent")]
    public static partial int CtxGetCurrent(out IntPtr context);

    [LibraryImport(Lib, EntryPoint = "cuCtxPushCurrent_v2")]
    public static partial int CtxPushCurrent(IntPtr context);

    [LibraryImport(Lib, EntryPoint = "cuCtxPopCurrent_v2")]
    public static partial int CtxPopCurrent(out IntPtr context);

    [LibraryImport(Lib, EntryPoint = "cuModuleLoadDataEx")]
    public static partial int ModuleLoadDataEx(out IntPtr module, byte* image, uint options, int* optionKeys, void** optionValues);

    [LibraryImport(Lib, EntryPoint = "cuModuleGetFunction")]
    public static partial int ModuleGetFunction(out IntPtr function, IntPtr module, byte* name);

    [LibraryImport(Lib, EntryPoint = "cuModuleUnload")]
    public static partial int ModuleUnload(IntPtr module);

    [LibraryImport(Lib, EntryPoint = "cuMemAlloc_v2")]
    public static partial int MemAlloc(out IntPtr pointer, nuint bytes);

    [LibraryImport(Lib, EntryPoint = "cuMemFree_v2")]
    public static partial int MemFree(IntPtr pointer);

    [LibraryImport(Lib, EntryPoint = "cuMemAllocHost_v2")]
    public static partial int MemAllocHost(out IntPtr pointer, nuint bytes);

    [LibraryImport(Lib, EntryPoint = "cuMemFreeHost")]
    public static partial int MemFreeHost(IntPtr pointer);

    [LibraryImport(Lib, EntryPoint = "cuMemGetInfo_v2")]
    public static partial int MemGetInfo(out nuint free, out nuint total);

    [LibraryImport(Lib, EntryPoint = "cuMemcpyHtoDAsync_v2")]
    public static partial int MemcpyHtoDAsync(IntPtr destination, void* source, nuint bytes, IntPtr stream);

    [LibraryImport(Lib, EntryPoint = "cuMemcpyDtoHAsync_v2")]
    public static partial int MemcpyDtoHAsync(void* destination, IntPtr source, nuint bytes, IntPtr stream);

    [LibraryImport(Lib, EntryPoint = "cuMemcpyDtoDAsync_v2")]
    public static partial int MemcpyDtoDAsync(IntPtr destination, IntPtr source, nuint bytes, IntPtr stream);

    [LibraryImport(Lib, EntryPoint = "cuMemsetD8Async")]
    public static partial int MemsetD8Async(IntPtr destination, byte value, nuint count, IntPtr stream);

    [LibraryImport(Lib, EntryPoint = "cuStreamCreate")]
    public static partial int StreamCreate(out IntPtr stream, uint flags);

    [LibraryImport(Lib, EntryPoint = "cuStreamDestroy_v2")]
    public static partial int StreamDestroy(IntPtr stream);

    [LibraryImport(Lib, EntryPoint = "cuStreamSynchronize")]
    public static partial int StreamSynchronize(IntPtr stream);

    [LibraryImport(Lib, EntryPoint = "cuEventCreate")]
    public static partial int EventCreate(out IntPtr @event, uint flags);

    [LibraryImport(Lib, EntryPoint = "cuEventDestroy_v2")]
    public static partial int EventDestroy(IntPtr @event);

    [LibraryImport(Lib, EntryPoint = "cuEventRecord")]
    public static partial int EventRecord(IntPtr @event, IntPtr stream);

    [LibraryImport(Lib, EntryPoint = "cuEventSynchronize")]
    public static partial int EventSynchronize(IntPtr @event);

    [LibraryImport(Lib, EntryPoint = "cuEventElapsedTime")]
    public static partial int EventElapsedTime(out float milliseconds, IntPtr start, IntPtr end);

    [LibraryImport(Lib, EntryPoint = "cuDeviceGetAttribute")]
    public static partial int DeviceGetAttribute(out int value, int attribute, int device);

    [LibraryImport(Lib, EntryPoint = "cuLaunchKernel")]
    public static partial int LaunchKernel(IntPtr function, uint gridX, uint gridY, uint gridZ, uint blockX, uint blockY, uint blockZ,
        uint sharedBytes, IntPtr stream, void** arguments, void** extra);

    [LibraryImport(Lib, EntryPoint = "cuGetErrorName")]
    private static partial int GetErrorName(int error, out IntPtr name);

    /// <summary>Throws if a driver call failed, naming the call and the driver's error.</summary>
    public static void Check(int result, [System.Runtime.CompilerServices.CallerArgumentExpression(nameof(result))] string call = "")
    {
        if (result != 0)
            throw new CudaException($"{call} failed: {ErrorName(result)} ({result})");
    }

    public static string ErrorName(int result)
    {
        try
        {
            return GetErrorName(result, out IntPtr name) == 0 && name != IntPtr.Zero ? Marshal.PtrToStringAnsi(name) ?? "?" : "unknown error";
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return "unknown error";
        }
    }
}

/// <summary>CUDA graphs through the driver API (ILGPU has no binding for them): capture, instantiate, update, launch.</summary>
internal static unsafe partial class GraphDriver
{
    private const string Lib = "cuda";

    /// <summary>CU_STREAM_CAPTURE_MODE_RELAXED: other threads' unsafe calls are not policed, allocations are allowed.</summary>
    public const int CaptureModeRelaxed = 2;

    [LibraryImport(Lib, EntryPoint = "cuStreamBeginCapture_v2")]
    public static partial int StreamBeginCapture(IntPtr stream, int mode);

    [LibraryImport(Lib, EntryPoint = "cuStreamEndCapture")]
    public static partial int StreamEndCapture(IntPtr stream, out IntPtr graph);

    [LibraryImport(Lib, EntryPoint = "cuGraphInstantiateWithFlags")]
    public static partial int GraphInstantiateWithFlags(out IntPtr exec, IntPtr graph, ulong flags);

    /// <summary>CUDA 12's update; <paramref name="resultInfo"/> is a CUgraphExecUpdateResultInfo (24 bytes).</summary>
    [LibraryImport(Lib, EntryPoint = "cuGraphExecUpdate_v2")]
    public static partial int GraphExecUpdate(IntPtr exec, IntPtr graph, void* resultInfo);

    [LibraryImport(Lib, EntryPoint = "cuGraphLaunch")]
    public static partial int GraphLaunch(IntPtr exec, IntPtr stream);

    [LibraryImport(Lib, EntryPoint = "cuGraphDestroy")]
    public static partial int GraphDestroy(IntPtr graph);

    [LibraryImport(Lib, EntryPoint = "cuGraphExecDestroy")]
    public static partial int GraphExecDestroy(IntPtr exec);
}
