using System.Runtime.Intrinsics.X86;

namespace Engine.Backends.Cpu;

/// <summary>A unit of parallel work split into chunks; the pool calls <see cref="Execute"/> once per chunk.</summary>
public interface IParallelWork
{
    void Execute(int chunk, int chunks);
}

/// <summary>
/// A fixed set of worker threads that run one <see cref="IParallelWork"/> at a time, with the calling
/// thread taking chunks too, so <c>threads</c> means exactly that many threads compute. A forward pass
/// issues dozens of short parallel operations per token, so waking a sleeping thread for each (tens of
/// microseconds) would cost more than the work on a small model: between operations the workers spin
/// for a while (as llama.cpp's threads do) and only then block. Chunks are handed out with an atomic
/// counter; starting a run allocates nothing, so the pool can sit inside the per-token decode loop.
/// </summary>
/// <remarks>
/// One pool serves the whole process (<see cref="Shared"/>): every model (a target and its draft, a
/// guidance model) and every request runs its operations on the same workers, one run at a time, each
/// with as many participants as it asks for — so the process never has more busy threads than cores,
/// however many models it loads. Spinning backs off (a yield, then short sleeps) when a wait grows long,
/// so that another busy process on the machine slows the engine in proportion instead of stalling it.
/// </remarks>
public sealed class WorkerPool : IDisposable
{
    private static readonly Lazy<WorkerPool> s_shared = new(() => new WorkerPool(Environment.ProcessorCount));

    /// <summary>The process-wide pool: one worker per core (the caller being one of them); never disposed.</summary>
    public static WorkerPool Shared => s_shared.Value;

    private readonly object _runLock = new();
    private int _participants;
    /// <summary>How long an idle worker spins before it blocks (a decode step's gaps are shorter).</summary>
    private static readonly long SpinTicks = System.Diagnostics.Stopwatch.Frequency / 1000; // 1 ms

    private readonly Thread[] _workers;
    private readonly object _gate = new();
    private IParallelWork? _work;
    // The run's claim counter: run tag (24 bits) | chunks (20 bits) | next chunk (20 bits), claimed by
    // compare-and-swap, so a worker that wakes late can never take a chunk of a run it did not see start.
    private long _claim;
    private int _done;
    private int _epoch;
    private int _sleepers;
    private Exception? _error;
    private volatile bool _disposed;

    private const int ChunkBits = 20, TagBits = 24;
    private const int MaxChunks = (1 << ChunkBits) - 1;

    public WorkerPool(int threads)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(threads, 1);
        Threads = threads;
        _workers = new Thread[threads - 1];
        for (int i = 0; i < _workers.Length; i++)
        {
            _workers[i] = new Thread(WorkerLoop) { IsBackground = true, Name = $"engine-worker-{i + 1}" };
            _workers[i].Start(i);
        }
    }

    public int Threads { get; }

    /// <summary>Runs all <paramref name="chunks"/> chunks of <paramref name="work"/> and returns when they are done.</summary>
    /// <param name="threads">Threads that compute, the caller included (0: all of the pool's); more than the pool has is capped.</param>
    /// <remarks>
    /// The caller takes chunks too and waits only for chunks in progress, never for a worker to wake up:
    /// when the machine is oversubscribed and a worker is off its core, the caller does its share.
    /// </remarks>
    public void Run(IParallelWork work, int chunks, int threads = 0)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (chunks <= 0)
            return;
        int helpers = Math.Min(_workers.Length, (threads <= 0 ? Threads : threads) - 1);
        if (helpers <= 0 || chunks == 1 || chunks > MaxChunks)
        {
            for (int c = 0; c < chunks; c++)
                work.Execute(c, chunks);
            return;
        }
        lock (_runLock) // one run at a time: callers on other threads (requests, models) queue here
        {
            _work = work;
            _error = null;
            _participants = helpers;
            Volatile.Write(ref _done, 0);
            int epoch = _epoch + 1;
            Volatile.Write(ref _claim, Pack(epoch, chunks, 0));
            Interlocked.Exchange(ref _epoch, epoch); // publishes the run to spinning workers
            if (Volatile.Read(ref _sleepers) > 0)
            {
                lock (_gate)
                    Monitor.PulseAll(_gate);
            }
            Drain(epoch);
            var wait = new Backoff();
            while (Volatile.Read(ref _done) != chunks)
                wait.Pause();
            _work = null;
            if (_error is { } e)
                throw new AggregateException("a parallel kernel failed", e);
        }
    }

    private static long Pack(int epoch, int chunks, int next) =>
        (long)(epoch & ((1 << TagBits) - 1)) << (2 * ChunkBits) | (long)chunks << ChunkBits | (uint)next;

    /// <summary>Claims and runs chunks of the run tagged <paramref name="epoch"/> until none is left (or another run has started).</summary>
    private void Drain(int epoch)
    {
        int tag = epoch & ((1 << TagBits) - 1);
        while (true)
        {
            long v = Volatile.Read(ref _claim);
            int chunks = (int)(v >> ChunkBits) & MaxChunks, next = (int)v & MaxChunks;
            if ((int)(v >>> (2 * ChunkBits)) != tag || next >= chunks)
                return;
            if (Interlocked.CompareExchange(ref _claim, v + 1, v) != v)
                continue;
            // the run cannot finish while this chunk is claimed, so _work is still its work
            try
            {
                _work!.Execute(next, chunks);
            }
            catch (Exception e)
            {
                Interlocked.CompareExchange(ref _error, e, null);
            }
            Interlocked.Increment(ref _done);
        }
    }

    /// <summary>
    /// Waiting that spins briefly, then yields the core, then sleeps a little: on an idle machine a wait
    /// ends within the spin; on an oversubscribed one the thread being waited for gets the core.
    /// </summary>
    private struct Backoff
    {
        private int _count;

        public void Pause()
        {
            _count++;
            if (_count < 4096)
                WorkerPool.Pause();
            else if (_count < 4096 + 64)
                Thread.Yield();
            else
                Thread.Sleep(_count < 4096 + 256 ? 0 : 1);
        }
    }

    private void WorkerLoop(object? indexObject)
    {
        int index = (int)indexObject!;
        // Epoch 0 is the state at construction: a thread that starts late must still take part in the
        // runs published before it first looked.
        int seen = 0;
        while (true)
        {
            int epoch = WaitForEpoch(seen);
            if (_disposed)
                return;
            seen = epoch;
            if (index < Volatile.Read(ref _participants)) // a run may ask for fewer threads
                Drain(epoch);
        }
    }

    /// <summary>Spins until the epoch moves past <paramref name="seen"/>; blocks if that takes long.</summary>
    private int WaitForEpoch(int seen)
    {
        while (true)
        {
            long deadline = System.Diagnostics.Stopwatch.GetTimestamp() + SpinTicks;
            int rounds = 0;
            do
            {
                for (int i = 0; i < 64; i++)
                {
                    int epoch = Volatile.Read(ref _epoch);
                    if (epoch != seen || _disposed)
                        return epoch;
                    Pause();
                }
                if (++rounds % 16 == 0)
                    Thread.Yield(); // let a descheduled thread (ours or another process's) have the core
            }
            while (System.Diagnostics.Stopwatch.GetTimestamp() < deadline);

            // Sleep on a condition variable: the epoch is re-checked under the lock, and Run pulses under
            // the same lock whenever anyone sleeps, so a published run is never missed.
            lock (_gate)
            {
                _sleepers++;
                while (Volatile.Read(ref _epoch) == seen && !_disposed)
                    Monitor.Wait(_gate);
                _sleepers--;
            }
        }
    }

    private static void Pause()
    {
        if (X86Base.IsSupported)
            X86Base.Pause();
        else
            Thread.SpinWait(1);
    }

    /// <summary>The [start, end) share of <paramref name="total"/> items for chunk <paramref name="chunk"/>.</summary>
    public static (int Start, int End) Range(int total, int chunk, int chunks)
    {
        long start = (long)total * chunk / chunks;
        long end = (long)total * (chunk + 1) / chunks;
        return ((int)start, (int)end);
    }

    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        Interlocked.Increment(ref _epoch);
        lock (_gate)
            Monitor.PulseAll(_gate);
        foreach (var t in _workers)
            t.Join();
    }
}
