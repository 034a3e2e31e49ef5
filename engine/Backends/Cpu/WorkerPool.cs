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
public sealed class WorkerPool : IDisposable
{
    /// <summary>How long an idle worker spins before it blocks (a decode step's gaps are shorter).</summary>
    private static readonly long SpinTicks = System.Diagnostics.Stopwatch.Frequency / 1000; // 1 ms

    private readonly Thread[] _workers;
    private readonly object _gate = new();
    private IParallelWork? _work;
    private int _chunks;
    private int _next;
    private int _running;
    private int _epoch;
    private int _sleepers;
    private Exception? _error;
    private volatile bool _disposed;

    public WorkerPool(int threads)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(threads, 1);
        Threads = threads;
        _workers = new Thread[threads - 1];
        for (int i = 0; i < _workers.Length; i++)
        {
            _workers[i] = new Thread(WorkerLoop) { IsBackground = true, Name = $"engine-worker-{i + 1}" };
            _workers[i].Start();
        }
    }

    public int Threads { get; }

    /// <summary>Runs all <paramref name="chunks"/> chunks of <paramref name="work"/> and returns when they are done.</summary>
    public void Run(IParallelWork work, int chunks)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (chunks <= 0)
            return;
        if (_workers.Length == 0 || chunks == 1)
        {
            for (int c = 0; c < chunks; c++)
                work.Execute(c, chunks);
            return;
        }
        _work = work;
        _chunks = chunks;
        _error = null;
        Volatile.Write(ref _next, 0);
        Volatile.Write(ref _running, _workers.Length);
        Interlocked.Increment(ref _epoch); // publishes the fields above to spinning workers
        if (Volatile.Read(ref _sleepers) > 0)
        {
            lock (_gate)
                Monitor.PulseAll(_gate);
        }
        Drain(work, chunks);
        while (Volatile.Read(ref _running) != 0)
            Pause();
        _work = null;
        if (_error is { } e)
            throw new AggregateException("a parallel kernel failed", e);
    }

    private void Drain(IParallelWork work, int chunks)
    {
        int c;
        while ((c = Interlocked.Increment(ref _next) - 1) < chunks)
        {
            try
            {
                work.Execute(c, chunks);
            }
            catch (Exception e)
            {
                Interlocked.CompareExchange(ref _error, e, null);
            }
        }
    }

    private void WorkerLoop()
    {
        // Epoch 0 is the state at construction: a thread that starts late must still take part in the
        // runs published before it first looked.
        int seen = 0;
        while (true)
        {
            int epoch = WaitForEpoch(seen);
            if (_disposed)
                return;
            seen = epoch;
            Drain(_work!, _chunks);
            Interlocked.Decrement(ref _running);
        }
    }

    /// <summary>Spins until the epoch moves past <paramref name="seen"/>; blocks if that takes long.</summary>
    private int WaitForEpoch(int seen)
    {
        while (true)
        {
            long deadline = System.Diagnostics.Stopwatch.GetTimestamp() + SpinTicks;
            do
            {
                for (int i = 0; i < 64; i++)
                {
                    int epoch = Volatile.Read(ref _epoch);
                    if (epoch != seen || _disposed)
                        return epoch;
                    Pause();
                }
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
