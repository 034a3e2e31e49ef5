namespace Engine.Backends.Cpu;

/// <summary>A unit of parallel work split into chunks; the pool calls <see cref="Execute"/> once per chunk.</summary>
public interface IParallelWork
{
    void Execute(int chunk, int chunks);
}

/// <summary>
/// A fixed set of worker threads that run one <see cref="IParallelWork"/> at a time, with the calling
/// thread taking chunks too, so <c>threads</c> means exactly that many threads compute. Chunks are
/// handed out with an atomic counter; starting a run allocates nothing (work objects are reused by
/// their owners), so the pool can sit inside the per-token decode loop.
/// </summary>
public sealed class WorkerPool : IDisposable
{
    private readonly Thread[] _workers;
    private readonly SemaphoreSlim _start = new(0);
    private IParallelWork? _work;
    private int _chunks;
    private int _next;
    private int _running;
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
        _start.Release(_workers.Length);
        Drain();
        var spin = new SpinWait();
        while (Volatile.Read(ref _running) != 0)
            spin.SpinOnce(sleep1Threshold: -1);
        _work = null;
        if (_error is { } e)
            throw new AggregateException("a parallel kernel failed", e);
    }

    private void Drain()
    {
        var work = _work!;
        int chunks = _chunks;
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
        while (true)
        {
            _start.Wait();
            if (_disposed)
                return;
            Drain();
            Interlocked.Decrement(ref _running);
        }
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
        if (_workers.Length > 0)
            _start.Release(_workers.Length);
        foreach (var t in _workers)
            t.Join();
        _start.Dispose();
    }
}
