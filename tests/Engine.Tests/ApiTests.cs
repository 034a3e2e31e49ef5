using Engine.Api;
using Engine.Sampling;

namespace Engine.Tests;

public class ApiTests
{
    /// <summary>A load reports its progress over the weight tensors (what the CLI's bar shows on a terminal).</summary>
    [Test]
    public void Loading_reports_progress_over_the_tensors()
    {
        var reports = new List<(long Done, long Total)>();
        using var model = LanguageModel.Load(SharedData.StoriesGguf, new ModelOptions { Threads = 1, LoadProgress = new Recorder(reports) });
        int tensors;
        using (var file = Engine.Formats.Gguf.GgufFile.Open(SharedData.StoriesGguf))
            tensors = file.Tensors.Count;
        Assert.That(reports[0], Is.EqualTo((0L, (long)tensors)));
        Assert.That(reports.Select(r => r.Done), Is.Ordered);
        Assert.That(reports[^1].Done, Is.EqualTo(tensors), "every tensor of stories260K is loaded");
    }

    private sealed class Recorder(List<(long Done, long Total)> reports) : IProgress<(long Done, long Total)>
    {
        public void Report((long Done, long Total) value) => reports.Add(value);
    }

    /// <summary>stories260K's reference prompt continued greedily for 48 tokens through GenerateAsync: the pieces as they arrived.</summary>
    private static async Task<(string Text, List<string> Pieces)> StreamReference(Session session)
    {
        string prompt = "Once upon a time, there was a little dog";
        var pieces = new List<string>();
        await foreach (string piece in session.GenerateAsync(prompt, new GenerationOptions { MaxTokens = 48, Sampling = SamplingOptions.Greedy }))
            pieces.Add(piece);
        return (prompt + string.Concat(pieces), pieces);
    }

    [Test]
    public async Task GenerateAsync_streams_the_reference_continuation()
    {
        var expected = SharedData.StoriesExpected();
        using var lm = LanguageModel.Load(SharedData.StoriesGguf, new ModelOptions { Threads = 2 });
        using var session = lm.CreateSession();
        var (text, pieces) = await StreamReference(session);
        Assert.That(text, Is.EqualTo(expected.TextAfterPrompt));
        Assert.That(pieces, Has.Count.GreaterThan(10), "text arrives piece by piece");
        Assert.That(session.LastStats!.GeneratedTokens, Is.EqualTo(48));
        Assert.That(session.LastStats.StopReason, Is.EqualTo(StopReason.MaxTokens));
    }

    /// <summary>The warm-up pass at load (the CLI's default) leaves nothing behind: the reference continuation is unchanged.</summary>
    [Test]
    public async Task A_warmed_up_model_gives_the_reference_continuation()
    {
        var expected = SharedData.StoriesExpected();
        using var lm = LanguageModel.Load(SharedData.StoriesGguf, new ModelOptions { Threads = 2, WarmUp = true });
        lm.WarmUp(); // and again, on a model already warm
        using var session = lm.CreateSession();
        Assert.That((await StreamReference(session)).Text, Is.EqualTo(expected.TextAfterPrompt));
        Assert.That(session.LastStats!.PromptTokens, Is.EqualTo(session.Tokens.Count - 48), "the session holds only its own tokens");
    }

    [Test]
    public async Task GenerateAsync_stops_when_cancelled()
    {
        using var lm = LanguageModel.Load(SharedData.StoriesGguf, new ModelOptions { Threads = 1 });
        using var session = lm.CreateSession();
        using var cancel = new CancellationTokenSource();
        int received = 0;
        await Assert.CatchAsync<OperationCanceledException>(async () =>
        {
            await foreach (string _ in session.GenerateAsync("Once", new GenerationOptions { MaxTokens = 400, Sampling = SamplingOptions.Greedy }, cancel.Token))
            {
                if (++received == 3)
                    await cancel.CancelAsync();
            }
        });
        Assert.That(received, Is.EqualTo(3));
        Assert.That(session.Tokens.Count, Is.LessThan(10), "generation stopped right after cancellation");
    }

    [Test]
    public void A_session_continues_where_it_stopped()
    {
        using var lm = LanguageModel.Load(SharedData.StoriesGguf, new ModelOptions { Threads = 1 });
        var greedy = new GenerationOptions { MaxTokens = 30, Sampling = SamplingOptions.Greedy };
        using var once = lm.CreateSession();
        var all = once.Generate([1], greedy with { MaxTokens = 60 }).ToList();
        using var twice = lm.CreateSession();
        var first = twice.Generate([1], greedy).ToList();
        var second = twice.Generate([], greedy).ToList();
        Assert.That(first.Concat(second), Is.EqualTo(all));
        Assert.That(twice.Tokens, Has.Count.EqualTo(61));
        twice.Reset();
        Assert.That(twice.Tokens, Is.Empty);
        Assert.That(twice.Generate([1], greedy).ToList(), Is.EqualTo(first));
    }

    [Test]
    public void Generation_stops_when_the_context_is_full()
    {
        using var lm = LanguageModel.Load(SharedData.StoriesGguf, new ModelOptions { Threads = 1, ContextLength = 20 });
        using var session = lm.CreateSession();
        var ids = session.Generate([1], new GenerationOptions { MaxTokens = 100, Sampling = SamplingOptions.Greedy }).ToList();
        Assert.That(ids, Has.Count.EqualTo(19));
        Assert.That(session.LastStats!.StopReason, Is.EqualTo(StopReason.ContextFull));
        Assert.Throws<ArgumentException>(() => session.Generate([5, 6], new GenerationOptions()), "no room for more prompt");

    }

    [Test]
    public void Generation_stops_at_the_end_of_sequence_token_without_returning_it()
    {
        // Find what a tiny model generates greedily, then declare its 6th token to be EOS.
        var model = TinyModel.Random(new TinySpec("eos", Seed: 31));
        using var dir = new TempDir();
        var greedy = new GenerationOptions { MaxTokens = 12, Sampling = SamplingOptions.Greedy };
        List<int> run;
        using (var lm = LanguageModel.Load(model.WriteGguf(dir.File("a.gguf")), new ModelOptions { Threads = 1 }))
        using (var session = lm.CreateSession())
            run = session.Generate([256], greedy).ToList();
        int eos = run[5];
        int firstEos = run.IndexOf(eos);
        using var withEos = LanguageModel.Load(model.WriteGguf(dir.File("b.gguf"), eosId: (uint)eos), new ModelOptions { Threads = 1 });
        using var s = withEos.CreateSession();
        var ids = s.Generate([256], greedy).ToList();
        Assert.That(ids, Is.EqualTo(run.Take(firstEos)));
        Assert.That(s.LastStats!.StopReason, Is.EqualTo(StopReason.EndOfGeneration));
        s.Reset();
        var all = s.Generate([256], greedy with { StopAtEndOfGeneration = false }).ToList();
        Assert.That(all, Has.Count.EqualTo(12), "without stopping, EOS is just a token");
    }

    [Test]
    public void Readme_shows_the_example_program_verbatim()
    {
        string example = File.ReadAllText(Path.Combine(SharedData.RepositoryRoot, "tools", "Engine.Example", "Program.cs")).ReplaceLineEndings("\n").Trim();
        string readme = File.ReadAllText(Path.Combine(SharedData.RepositoryRoot, "README.md")).ReplaceLineEndings("\n");
        Assert.That(readme, Does.Contain(example), "README.md must show tools/Engine.Example/Program.cs as it is");
    }
}

public class WorkerPoolTests
{
    private sealed class Record(int chunks) : Backends.Cpu.IParallelWork
    {
        public readonly int[] Hits = new int[chunks];
        public void Execute(int chunk, int total) => Interlocked.Increment(ref Hits[chunk]);
    }

    private sealed class Fail : Backends.Cpu.IParallelWork
    {
        public void Execute(int chunk, int chunks)
        {
            if (chunk == 3)
                throw new InvalidOperationException("chunk 3 failed");
        }
    }

    [TestCase(1)]
    [TestCase(2)]
    [TestCase(5)]
    public void Every_chunk_runs_exactly_once(int threads)
    {
        using var pool = new Backends.Cpu.WorkerPool(threads);
        for (int run = 0; run < 200; run++)
        {
            var work = new Record(1 + run % 17);
            pool.Run(work, work.Hits.Length);
            Assert.That(work.Hits, Is.All.EqualTo(1), $"run {run}");
        }
    }

    /// <summary>
    /// More threads than cores, runs of 1..16 chunks back to back: workers that start late, fall asleep
    /// between runs or wake up slowly must still take part in every run (a lost wake-up hangs Run).
    /// </summary>
    [TestCase(8)]
    [TestCase(3)]
    public void No_run_is_lost_when_threads_outnumber_cores(int threads)
    {
        using var pool = new Backends.Cpu.WorkerPool(threads);
        for (int run = 0; run < 300; run++)
        {
            var work = new Record(1 + run % 16);
            var task = Task.Run(() => pool.Run(work, work.Hits.Length));
            Assert.That(task.Wait(TimeSpan.FromSeconds(20)), Is.True, $"run {run} did not finish");
            Assert.That(work.Hits, Is.All.EqualTo(1));
            if (run % 50 == 49)
                Thread.Sleep(5); // let the workers fall asleep
        }
    }

    /// <summary>
    /// One pool for the process: every CPU backend (a target and its draft, any number of models) runs on
    /// <see cref="Backends.Cpu.WorkerPool.Shared"/>, asks for no more threads than there are cores, and
    /// runs from several callers at once take turns — each with only the participants it asked for.
    /// </summary>
    [Test]
    public void Every_backend_shares_one_pool_of_at_most_one_thread_per_core()
    {
        using var a = new Backends.Cpu.CpuBackend(2);
        using var b = new Backends.Cpu.CpuBackend(64);
        Assert.That(b.Threads, Is.EqualTo(Environment.ProcessorCount), "never more computing threads than cores");
        Assert.That(Backends.Cpu.WorkerPool.Shared.Threads, Is.EqualTo(Environment.ProcessorCount));

        using var pool = new Backends.Cpu.WorkerPool(5);
        var tasks = Enumerable.Range(0, 4).Select(caller => Task.Run(() =>
        {
            for (int run = 0; run < 100; run++)
            {
                var work = new Record(1 + (run + caller) % 13);
                pool.Run(work, work.Hits.Length, threads: 1 + caller);
                if (!work.Hits.All(h => h == 1))
                    return false;
            }
            return true;
        })).ToArray();
        Assert.That(Task.WaitAll(tasks, TimeSpan.FromSeconds(60)), Is.True, "concurrent runs finished");
        Assert.That(tasks.Select(t => t.Result), Is.All.True, "every chunk of every run exactly once");
    }

    [Test]
    public void A_failing_chunk_surfaces_and_the_pool_keeps_working()
    {
        using var pool = new Backends.Cpu.WorkerPool(3);
        var e = Assert.Throws<AggregateException>(() => pool.Run(new Fail(), 8))!;
        Assert.That(e.InnerException!.Message, Is.EqualTo("chunk 3 failed"));
        var work = new Record(8);
        pool.Run(work, 8);
        Assert.That(work.Hits, Is.All.EqualTo(1));
    }

    [Test]
    public void Ranges_cover_the_total_without_gaps()
    {
        int next = 0;
        for (int c = 0; c < 7; c++)
        {
            var (start, end) = Backends.Cpu.WorkerPool.Range(100, c, 7);
            Assert.That(start, Is.EqualTo(next));
            next = end;
        }
        Assert.That(next, Is.EqualTo(100));
    }
}

/// <summary>Models reached through symbolic links (the Hugging Face cache's snapshots/ → blobs/ layout) load as the files they point at.</summary>
public class LinkedModelTests
{
    [Test]
    public void A_model_behind_symbolic_links_loads_and_generates_the_reference()
    {
        var expected = SharedData.StoriesExpected();
        using var dir = new TempDir();
        // the hub cache's layout: blobs/<hash> holding the bytes, snapshots/<rev>/<name> linking to them
        string blobs = Directory.CreateDirectory(Path.Combine(dir.Path, "blobs")).FullName;
        string snapshot = Directory.CreateDirectory(Path.Combine(dir.Path, "snapshots", "abc123")).FullName;
        File.Copy(SharedData.StoriesGguf, Path.Combine(blobs, "0f1e2d"));
        File.CreateSymbolicLink(Path.Combine(snapshot, "stories260K.gguf"), Path.Combine("..", "..", "blobs", "0f1e2d"));
        string hf = Directory.CreateDirectory(Path.Combine(dir.Path, "snapshots", "hf")).FullName;
        foreach (string file in Directory.GetFiles(SharedData.StoriesHf))
        {
            string blob = Path.Combine(blobs, Path.GetFileName(file) + ".blob");
            File.Copy(file, blob);
            File.CreateSymbolicLink(Path.Combine(hf, Path.GetFileName(file)), blob);
        }
        foreach (string path in new[] { Path.Combine(snapshot, "stories260K.gguf"), hf })
        {
            using var lm = LanguageModel.Load(path, new ModelOptions { Threads = 1 });
            using var session = lm.CreateSession();
            var ids = session.Generate([1], new GenerationOptions { MaxTokens = 64, Sampling = Engine.Sampling.SamplingOptions.Greedy }).ToList();
            Assert.That(ids, Is.EqualTo(expected.FromBos.Take(64)), path);
        }
        string dangling = Path.Combine(snapshot, "gone.gguf");
        File.CreateSymbolicLink(dangling, Path.Combine(blobs, "missing"));
        var e = Assert.Throws<FileNotFoundException>(() => LanguageModel.Load(dangling))!;
        Assert.That(e.Message, Does.Contain("gone.gguf"));
    }
}
