using System.Runtime.InteropServices;

namespace Engine.Backends.Cpu;

/// <summary>
/// Zeroed, page-aligned memory for KV blocks, carved in order from 2 MiB-aligned anonymous mappings
/// marked <c>MADV_HUGEPAGE</c> (Linux). Why: the attention kernels read each head's keys and values of
/// every block a 4 KiB page apiece, so with small pages a 16-sequence step misses the TLB thousands of
/// times (in a VM, each a two-level page walk); and a block first used costs 288 page faults with small
/// pages (1.2 MiB for the 110M shape) against one or two with huge ones. Where the kernel gives no huge
/// pages (transparent huge pages off) the mappings are ordinary anonymous memory, still zeroed and
/// still touched only on use.
/// </summary>
internal sealed unsafe partial class KvArena : IDisposable
{
    private const nuint HugePage = 2u << 20;
    private const nuint Page = 4096;
    private const int ProtReadWrite = 0x1 | 0x2, MapPrivateAnonymous = 0x02 | 0x20, MadviseHugePage = 14, MadvisePopulateWrite = 23, ENOMEM = 12;

    /// <summary>Whether this platform maps arenas (64-bit Linux); elsewhere blocks come from the native heap.</summary>
    public static bool Supported => OperatingSystem.IsLinux() && (RuntimeInformation.ProcessArchitecture is Architecture.X64 or Architecture.Arm64);

    /// <summary>
    /// Blocks smaller than this stay on the native heap: a huge page is committed whole on first touch,
    /// so a small model's store (a test's, a draft's) would hold 2 MiB for a few KiB of cache.
    /// </summary>
    public const nuint MinBlockBytes = 256u << 10;

    private readonly nuint _blockBytes, _arenaBytes;
    private readonly List<(nint Start, nuint Length)> _maps = [];
    private byte* _next, _end;

    public KvArena(nuint blockBytes)
    {
        _blockBytes = (blockBytes + Page - 1) & ~(Page - 1);
        // 32 MiB at a time, or one block where a block is larger: a block's tail page shares nothing
        _arenaBytes = Math.Max(32u << 20, (_blockBytes + HugePage - 1) & ~(HugePage - 1));
    }

    /// <summary>A new block of at least the constructor's bytes, zeroed, 4 KiB-aligned.</summary>
    public byte* Allocate()
    {
        if (_next == null || (nuint)(_end - _next) < _blockBytes)
            Map();
        byte* block = _next;
        _next += _blockBytes;
        return block;
    }

    private void Map()
    {
        nuint length = _arenaBytes + HugePage; // room to align the start to a huge page
        nint start = mmap(0, length, ProtReadWrite, MapPrivateAnonymous, -1, 0);
        if (start == -1)
            throw new InsufficientMemoryException($"the KV cache could not map {length >> 20} MiB more (mmap errno {Marshal.GetLastPInvokeError()})");
        _maps.Add((start, length));
        var aligned = (byte*)(((nuint)start + HugePage - 1) & ~(HugePage - 1));
        _ = madvise((nint)aligned, _arenaBytes, MadviseHugePage); // advice only: without huge pages the memory is still good
        _next = aligned;
        _end = aligned + _arenaBytes;
    }

    /// <summary>
    /// Faults in the pages of [<paramref name="start"/>, +<paramref name="bytes"/>) writable without writing
    /// them (<c>MADV_POPULATE_WRITE</c>, Linux 5.14+); false where the kernel cannot (then <see cref="Touch"/>).
    /// </summary>
    /// <exception cref="InsufficientMemoryException">The system has not the memory to back the range.</exception>
    public static bool Populate(byte* start, nuint bytes)
    {
        if (!Supported || ((nuint)start & (Page - 1)) != 0)
            return false;
        if (madvise((nint)start, bytes, MadvisePopulateWrite) == 0)
            return true;
        int errno = Marshal.GetLastPInvokeError();
        if (errno == ENOMEM)
            throw new InsufficientMemoryException($"the KV cache could not commit {bytes >> 10} KiB more: the system is out of memory");
        return false; // EINVAL: an older kernel
    }

    /// <summary>Writes every page of the range once, with the value it holds (the pool is not yet in use), so the system backs it.</summary>
    public static void Touch(byte* start, nuint bytes)
    {
        for (nuint i = 0; i < bytes; i += Page)
            Volatile.Write(ref start[i], Volatile.Read(ref start[i]));
        if (bytes > 0)
            Volatile.Write(ref start[bytes - 1], Volatile.Read(ref start[bytes - 1]));
    }

    public void Dispose()
    {
        foreach (var (start, length) in _maps)
            _ = munmap(start, length);
        _maps.Clear();
        _next = _end = null;
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint mmap(nint address, nuint length, int protection, int flags, int fd, nint offset);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int munmap(nint address, nuint length);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int madvise(nint address, nuint length, int advice);
}
