using System.Diagnostics;
using System.Runtime.InteropServices;

namespace Engine.Cuda;

/// <summary>
/// What <see cref="GpuDevice"/> asks of the machine: memory, copies, streams, events, attributes,
/// modules and launches. <see cref="CudaApi"/> is the CUDA driver (<see cref="Driver"/>);
/// <see cref="EmulatorApi"/> runs the same kernels, compiled for the host, in a fiber emulator
/// (kernels/host/simt.cpp) with host memory — how CI runs the GPU parity suite without a GPU.
/// </summary>
internal abstract unsafe class DeviceApi
{
    public abstract bool IsEmulator { get; }

    public abstract IntPtr Alloc(long bytes);

    public abstract void Free(IntPtr pointer);

    public abstract (long Free, long Total) MemoryInfo();

    public abstract IntPtr AllocHost(long bytes);

    public abstract void FreeHost(IntPtr pointer);

    public abstract void CopyToDevice(IntPtr destination, void* source, long bytes, IntPtr stream);

    public abstract void CopyToHost(void* destination, IntPtr source, long bytes, IntPtr stream);

    public abstract void CopyOnDevice(IntPtr destination, IntPtr source, long bytes, IntPtr stream);

    public abstract void Clear(IntPtr destination, long bytes, IntPtr stream);

    public abstract IntPtr CreateStream();

    public abstract void DestroyStream(IntPtr stream);

    public abstract void SynchronizeStream(IntPtr stream);

    public abstract IntPtr CreateEvent(bool timing);

    public abstract void DestroyEvent(IntPtr @event);

    public abstract void RecordEvent(IntPtr @event, IntPtr stream);

    public abstract void SynchronizeEvent(IntPtr @event);

    public abstract float ElapsedMilliseconds(IntPtr start, IntPtr end);

    public abstract int Attribute(int attribute);

    public abstract IntPtr LoadModule(string source, string ptx);

    public abstract void UnloadModule(IntPtr module);

    /// <summary>The kernel's handle, or <see cref="IntPtr.Zero"/> when the module has none of that name.</summary>
    public abstract IntPtr Function(IntPtr module, string kernel);

    public abstract void Launch(IntPtr function, (int X, int Y, int Z) grid, (int X, int Y, int Z) block, int sharedBytes, IntPtr stream, void** args);

    /// <summary>Makes the device's context current on this thread until disposed.</summary>
    public abstract GpuDevice.ContextScope Bind();

    public abstract void Release();
}

/// <summary>The CUDA driver, in the device's primary context.</summary>
internal sealed unsafe class CudaApi(int device, IntPtr context) : DeviceApi
{
    public override bool IsEmulator => false;

    public override IntPtr Alloc(long bytes)
    {
        int result = Driver.MemAlloc(out IntPtr pointer, (nuint)bytes);
        if (result != 0)
        {
            var (free, total) = MemoryInfo();
            throw new CudaException($"out of device memory: cuMemAlloc of {bytes >> 20} MiB failed ({Driver.ErrorName(result)}); {free >> 20} MiB of {total >> 20} MiB free");
        }
        return pointer;
    }

    public override void Free(IntPtr pointer) => Driver.MemFree(pointer);

    public override (long Free, long Total) MemoryInfo()
    {
        Driver.MemGetInfo(out nuint free, out nuint total);
        return ((long)free, (long)total);
    }

    public override IntPtr AllocHost(long bytes)
    {
        Driver.Check(Driver.MemAllocHost(out IntPtr pointer, (nuint)bytes));
        return pointer;
    }

    public override void FreeHost(IntPtr pointer) => Driver.MemFreeHost(pointer);

    public override void CopyToDevice(IntPtr destination, void* source, long bytes, IntPtr stream) =>
        Driver.Check(Driver.MemcpyHtoDAsync(destination, source, (nuint)bytes, stream));

    public override void CopyToHost(void* destination, IntPtr source, long bytes, IntPtr stream) =>
        Driver.Check(Driver.MemcpyDtoHAsync(destination, source, (nuint)bytes, stream));

    public override void CopyOnDevice(IntPtr destination, IntPtr source, long bytes, IntPtr stream) =>
        Driver.Check(Driver.MemcpyDtoDAsync(destination, source, (nuint)bytes, stream));

    public override void Clear(IntPtr destination, long bytes, IntPtr stream) =>
        Driver.Check(Driver.MemsetD8Async(destination, 0, (nuint)bytes, stream));

    public override IntPtr CreateStream()
    {
        Driver.Check(Driver.StreamCreate(out IntPtr stream, Driver.CU_STREAM_NON_BLOCKING));
        return stream;
    }

    public override void DestroyStream(IntPtr stream) => Driver.StreamDestroy(stream);

    public override void SynchronizeStream(IntPtr stream) => Driver.Check(Driver.StreamSynchronize(stream));

    public override IntPtr CreateEvent(bool timing)
    {
        Driver.Check(Driver.EventCreate(out IntPtr e, timing ? (uint)Driver.CU_EVENT_DEFAULT : Driver.CU_EVENT_DISABLE_TIMING));
        return e;
    }

    public override void DestroyEvent(IntPtr @event) => Driver.EventDestroy(@event);

    public override void RecordEvent(IntPtr @event, IntPtr stream) => Driver.Check(Driver.EventRecord(@event, stream));

    public override void SynchronizeEvent(IntPtr @event) => Driver.Check(Driver.EventSynchronize(@event));

    public override float ElapsedMilliseconds(IntPtr start, IntPtr end)
    {
        Driver.Check(Driver.EventElapsedTime(out float ms, start, end));
        return ms;
    }

    public override int Attribute(int attribute)
    {
        Driver.Check(Driver.DeviceGetAttribute(out int value, attribute, device));
        return value;
    }

    public override IntPtr LoadModule(string source, string ptx)
    {
        var image = System.Text.Encoding.ASCII.GetBytes(ptx + "\0");
        const int logBytes = 8192;
        byte* log = stackalloc byte[logBytes];
        int* keys = stackalloc int[2];
        void** values = stackalloc void*[2];
        keys[0] = Driver.CU_JIT_ERROR_LOG_BUFFER;
        values[0] = log;
        keys[1] = Driver.CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES;
        values[1] = (void*)(nint)logBytes;
        log[0] = 0;
        fixed (byte* p = image)
        {
            int result = Driver.ModuleLoadDataEx(out IntPtr module, p, 2, keys, values);
            if (result != 0)
            {
                string text = Marshal.PtrToStringAnsi((IntPtr)log) ?? "";
                throw new CudaException($"loading PTX {source} failed: {Driver.ErrorName(result)}{(string.IsNullOrWhiteSpace(text) ? "" : ": " + text.Trim())}");
            }
            return module;
        }
    }

    public override void UnloadModule(IntPtr module) => Driver.ModuleUnload(module);

    public override IntPtr Function(IntPtr module, string kernel)
    {
        var name = System.Text.Encoding.ASCII.GetBytes(kernel + "\0");
        fixed (byte* n = name)
            return Driver.ModuleGetFunction(out IntPtr fn, module, n) == 0 ? fn : IntPtr.Zero;
    }

    public override void Launch(IntPtr function, (int X, int Y, int Z) grid, (int X, int Y, int Z) block, int sharedBytes, IntPtr stream, void** args) =>
        Driver.Check(Driver.LaunchKernel(function, (uint)grid.X, (uint)grid.Y, (uint)grid.Z, (uint)block.X, (uint)block.Y, (uint)block.Z,
            (uint)sharedBytes, stream, args, null));

    public override GpuDevice.ContextScope Bind() => new(context);

    public override void Release() => Driver.DevicePrimaryCtxRelease(device);
}

/// <summary>
/// The kernel emulator (test-only library engine_cuda_emulator, built from kernels/host/simt.cpp):
/// device memory is host memory, every operation completes before it returns, events read a clock.
/// </summary>
internal sealed unsafe partial class EmulatorApi : DeviceApi
{
    private const string Lib = "engine_cuda_emulator";
    private readonly Dictionary<IntPtr, long> _eventTimes = [];
    private long _nextEvent = 1;

    /// <summary>Whether the emulator library can be loaded, with the reason when not.</summary>
    public static bool Available(out string reason)
    {
        try
        {
            engine_emu_function("rms_norm_f32");
            reason = "";
            return true;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            reason = $"the CUDA emulator library was not built (cmake with a C++ compiler): {e.Message.Split('\n')[0]}";
            return false;
        }
    }

    private readonly Dictionary<IntPtr, long> _sizes = [];

    /// <param name="memoryLimit">Bytes of "device memory" (0: unlimited, and MemoryInfo reports nothing):
    /// how tests run out of device memory on purpose.</param>
    public EmulatorApi(long memoryLimit = 0) => MemoryLimit = memoryLimit;

    public long MemoryLimit { get; }

    /// <summary>Bytes allocated and not yet freed.</summary>
    public long Used { get; private set; }

    public override bool IsEmulator => true;

    public override IntPtr Alloc(long bytes)
    {
        long size = Math.Max(bytes, 1);
        if (MemoryLimit > 0 && Used + size > MemoryLimit)
            throw new CudaException($"out of device memory: an allocation of {bytes >> 20} MiB failed; {(MemoryLimit - Used) >> 20} MiB of {MemoryLimit >> 20} MiB free (emulator limit)");
        var pointer = (IntPtr)NativeMemory.AlignedAlloc((nuint)size, 256);
        lock (_sizes)
            _sizes[pointer] = size;
        Used += size;
        return pointer;
    }

    public override void Free(IntPtr pointer)
    {
        lock (_sizes)
        {
            if (_sizes.Remove(pointer, out long size))
                Used -= size;
        }
        NativeMemory.AlignedFree((void*)pointer);
    }

    public override (long Free, long Total) MemoryInfo() => MemoryLimit > 0 ? (MemoryLimit - Used, MemoryLimit) : (0, 0);

    public override IntPtr AllocHost(long bytes) => (IntPtr)NativeMemory.AlignedAlloc((nuint)Math.Max(bytes, 1), 256); // host memory: not counted

    public override void FreeHost(IntPtr pointer) => NativeMemory.AlignedFree((void*)pointer);

    public override void CopyToDevice(IntPtr destination, void* source, long bytes, IntPtr stream) =>
        Buffer.MemoryCopy(source, (void*)destination, bytes, bytes);

    public override void CopyToHost(void* destination, IntPtr source, long bytes, IntPtr stream) =>
        Buffer.MemoryCopy((void*)source, destination, bytes, bytes);

    public override void CopyOnDevice(IntPtr destination, IntPtr source, long bytes, IntPtr stream) =>
        Buffer.MemoryCopy((void*)source, (void*)destination, bytes, bytes);

    public override void Clear(IntPtr destination, long bytes, IntPtr stream) => NativeMemory.Clear((void*)destination, (nuint)bytes);

    public override IntPtr CreateStream() => 1;

    public override void DestroyStream(IntPtr stream) { }

    public override void SynchronizeStream(IntPtr stream) { }

    public override IntPtr CreateEvent(bool timing) => (IntPtr)_nextEvent++;

    public override void DestroyEvent(IntPtr @event) => _eventTimes.Remove(@event);

    public override void RecordEvent(IntPtr @event, IntPtr stream) => _eventTimes[@event] = Stopwatch.GetTimestamp();

    public override void SynchronizeEvent(IntPtr @event) { }

    public override float ElapsedMilliseconds(IntPtr start, IntPtr end) =>
        (float)((_eventTimes[end] - _eventTimes[start]) * 1000.0 / Stopwatch.Frequency);

    /// <summary>Attributes of an imaginary small device (the emulator has no bandwidth to speak of).</summary>
    public override int Attribute(int attribute) => attribute switch
    {
        Driver.CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE => 1_000_000,
        Driver.CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH => 64,
        Driver.CU_DEVICE_ATTRIBUTE_CLOCK_RATE => 1_000_000,
        Driver.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT => 1,
        Driver.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR => 9,
        Driver.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR => 0,
        _ => 0,
    };

    public override IntPtr LoadModule(string source, string ptx) => 1;

    public override void UnloadModule(IntPtr module) { }

    public override IntPtr Function(IntPtr module, string kernel) => (IntPtr)engine_emu_function(kernel);

    public override void Launch(IntPtr function, (int X, int Y, int Z) grid, (int X, int Y, int Z) block, int sharedBytes, IntPtr stream, void** args)
    {
        if (engine_emu_launch((long)function, (uint)grid.X, (uint)grid.Y, (uint)grid.Z, (uint)block.X, (uint)block.Y, (uint)block.Z, args) != 0)
            throw new CudaException($"the emulator has no kernel {function}");
    }

    public override GpuDevice.ContextScope Bind() => default;

    public override void Release() { }

    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)]
    private static partial long engine_emu_function(string name);

    [LibraryImport(Lib)]
    private static partial int engine_emu_launch(long function, uint gx, uint gy, uint gz, uint bx, uint by, uint bz, void** args);
}
