using System.Threading.Channels;
using Engine.Api;
using Engine.Sampling;
using Engine.Serving;

namespace Engine.Tests;

/// <summary>
/// The <see cref="BatchScheduler"/>: concurrent completions decoded in shared steps give each request
/// what it gets alone; prompts that share a prefix reuse its KV blocks; stop strings, cancellation and
/// a full queue behave as a client expects, and nothing leaks from the KV pool.
/// </summary>
public class ServingTests
{
    private static LanguageModel Load(TempDir dir, int seed = 95) =>
        LanguageModel.Load(TinyModel.Random(new TinySpec("serve", Heads: 4, KvHeads: 2, Seed: seed, Context: 512)).WriteGguf(dir.File("m.gguf")),
            new ModelOptions { Threads = 1, ContextLength = 512 });

    internal static async Task<(List<int> Tokens, EndEvent End)> Drain(ChannelReader<CompletionEvent> reader)
    {
        var tokens = new List<int>();
        EndEvent? end = null;
        await foreach (var e in reader.ReadAllAsync())
        {
            if (e is TokenEvent t && t.Token >= 0)
                tokens.Add(t.Token);
            else if (e is EndEvent ee)
                end = ee;
        }
        return (tokens, end ?? throw new InvalidOperationException("no end event"));
    }

    [Test]
    public async Task Concurrent_requests_get_what_each_gets_alone()
    {
        using var dir = new TempDir();
        using var lm = Load(dir);
        var rng = new Random(5);
        var prompts = Enumerable.Range(0, 6).Select(i => Enumerable.Range(0, 5 + 17 * i).Select(_ => rng.Next(lm.Config.VocabSize)).ToArray()).ToArray();
        var alone = new List<int>[prompts.Length];
        for (int i = 0; i < prompts.Length; i++)
        {
            using var session = lm.CreateSession();
            alone[i] = session.Generate(prompts[i], new GenerationOptions { MaxTokens = 12 + i, Sampling = SamplingOptions.Greedy, StopAtEndOfGeneration = false }).ToList();
        }
        // four run at once, two wait; prompts are prefilled in chunks of 16 beside the decoders
        using var scheduler = new BatchScheduler(lm, new SchedulerOptions { Parallel = 4, PrefillChunk = 16, PrefixCaching = false });
        var readers = prompts.Select((p, i) => scheduler.Submit(new CompletionRequest { Prompt = p, MaxTokens = 12 + i, IgnoreEos = true })).ToArray();
        var results = await Task.WhenAll(readers.Select(Drain));
        for (int i = 0; i < prompts.Length; i++)
        {
            Assert.That(results[i].Tokens, Is.EqualTo(alone[i]), $"request {i}");
            Assert.That(results[i].End, Is.EqualTo(new EndEvent(FinishReason.Length, prompts[i].Length, 0, 12 + i, results[i].End.Text)));
        }
        var m = scheduler.Metrics();
        Assert.That((m.Requests, m.GeneratedTokens, m.Active, m.Queued), Is.EqualTo((6L, (long)Enumerable.Range(12, 6).Sum(), 0, 0)));
        Assert.That(m.Steps, Is.LessThan(m.GeneratedTokens), "steps are shared: fewer passes than tokens");
        Assert.That(m.KvUsedBlocks, Is.Zero, "every sequence gave its blocks back");
    }

    [Test]
    public async Task A_reserved_pool_serves_what_an_unreserved_one_does()
    {
        using var dir = new TempDir();
        using var lm = Load(dir);
        var rng = new Random(12);
        var prompts = Enumerable.Range(0, 3).Select(i => Enumerable.Range(0, 9 + 20 * i).Select(_ => rng.Next(lm.Config.VocabSize)).ToArray()).ToArray();
        async Task<List<int>[]> Serve(bool reserve)
        {
            using var scheduler = new BatchScheduler(lm, new SchedulerOptions { Parallel = 2, KvPoolTokens = 1024, ReserveKvPool = reserve });
            Assert.That(scheduler.KvPoolReserved, Is.EqualTo(reserve));
            Assert.That(scheduler.Metrics().KvUsedBlocks, Is.Zero, "reserved blocks are free until a request takes them");
            var results = await Task.WhenAll(prompts.Select(p => Drain(scheduler.Submit(new CompletionRequest { Prompt = p, MaxTokens = 10, IgnoreEos = true }))));
            return results.Select(r => r.Tokens).ToArray();
        }
        Assert.That(await Serve(true), Is.EqualTo(await Serve(false)));
    }

    [Test]
    public void A_pool_larger_than_memory_is_refused_before_anything_is_reserved()
    {
        using var dir = new TempDir();
        using var lm = Load(dir);
        long perToken = (long)lm.Config.Layers * 2 * lm.Config.KvDim * lm.Backend.KvElementBytes;
        long available = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        if (perToken * SchedulerOptions.MaxKvPoolTokens <= available)
            Assert.Ignore($"this process may use {available >> 30} GiB, more than the largest pool of the test model");
        var e = Assert.Throws<InsufficientMemoryException>(() =>
            _ = new BatchScheduler(lm, new SchedulerOptions { KvPoolTokens = SchedulerOptions.MaxKvPoolTokens, ReserveKvPool = true }))!;
        Assert.That(e.Message, Does.Contain($"{SchedulerOptions.MaxKvPoolTokens} tokens").And.Contain("--kv-tokens"));
        var range = Assert.Throws<ArgumentOutOfRangeException>(() =>
            _ = new BatchScheduler(lm, new SchedulerOptions { KvPoolTokens = SchedulerOptions.MaxKvPoolTokens + 1 }))!;
        Assert.That(range.Message, Does.Contain("KV pool"));
        // the model is untouched: a scheduler of sane size still serves
        using var scheduler = new BatchScheduler(lm, new SchedulerOptions { Parallel = 1, ReserveKvPool = true });
        Assert.That(scheduler.Metrics().KvTotalBlocks, Is.EqualTo(512 / 32));
    }

    [Test]
    public async Task A_shared_prompt_prefix_is_computed_once()
    {
        using var dir = new TempDir();
        using var lm = Load(dir);
        var rng = new Random(6);
        int[] system = Enumerable.Range(0, 200).Select(_ => rng.Next(lm.Config.VocabSize)).ToArray();
        int[] Ask(int n) => [.. system, .. Enumerable.Range(0, n).Select(_ => rng.Next(lm.Config.VocabSize))];
        int[] a = Ask(7), b = Ask(9);
        using var scheduler = new BatchScheduler(lm, new SchedulerOptions { Parallel = 2 });
        Assert.That(scheduler.PrefixCaching);
        var first = await Drain(scheduler.Submit(new CompletionRequest { Prompt = a, MaxTokens = 10, IgnoreEos = true }));
        var second = await Drain(scheduler.Submit(new CompletionRequest { Prompt = b, MaxTokens = 10, IgnoreEos = true }));
        var again = await Drain(scheduler.Submit(new CompletionRequest { Prompt = a, MaxTokens = 10, IgnoreEos = true }));
        Assert.That(first.End.CachedTokens, Is.Zero);
        Assert.That(second.End.CachedTokens, Is.EqualTo(192), "the system prompt's six full blocks of 32");
        Assert.That(again.End.CachedTokens, Is.EqualTo(192), "the whole prompt but its last partial block");
        Assert.That(again.Tokens, Is.EqualTo(first.Tokens), "reused blocks give the same answer");
        using var session = lm.CreateSession();
        Assert.That(second.Tokens, Is.EqualTo(session.Generate(b, new GenerationOptions { MaxTokens = 10, Sampling = SamplingOptions.Greedy, StopAtEndOfGeneration = false })),
            "a sequence started from cached blocks continues as one computed whole");

        // a conversation's next turn starts with the whole previous exchange cached
        int[] turn = [.. a, .. first.Tokens, .. Enumerable.Range(0, 5).Select(_ => rng.Next(lm.Config.VocabSize))];
        var next = await Drain(scheduler.Submit(new CompletionRequest { Prompt = turn, MaxTokens = 4, IgnoreEos = true }));
        Assert.That(next.End.CachedTokens, Is.EqualTo((a.Length + first.Tokens.Count - 1) / 32 * 32));
    }

    [Test]
    public async Task The_prefix_cache_gives_way_when_the_pool_runs_short()
    {
        using var dir = new TempDir();
        using var lm = Load(dir);
        var rng = new Random(7);
        // one sequence's pool (512 tokens = 16 blocks): every finished prompt stays cached until a new one needs the room
        using var scheduler = new BatchScheduler(lm, new SchedulerOptions { Parallel = 1 });
        for (int i = 0; i < 8; i++)
        {
            int[] prompt = Enumerable.Range(0, 150).Select(_ => rng.Next(lm.Config.VocabSize)).ToArray();
            var r = await Drain(scheduler.Submit(new CompletionRequest { Prompt = prompt, MaxTokens = 20, IgnoreEos = true }));
            Assert.That(r.Tokens, Has.Count.EqualTo(20), $"request {i} finished whole");
        }
        var m = scheduler.Metrics();
        Assert.That(m.KvUsedBlocks, Is.EqualTo(m.PrefixCachedBlocks), "only the prefix cache holds blocks between requests");
        Assert.That(m.KvUsedBlocks, Is.LessThanOrEqualTo(m.KvTotalBlocks));
    }

    [Test]
    public async Task Stop_strings_end_the_text_before_them()
    {
        using var dir = new TempDir();
        using var lm = Load(dir);
        using var scheduler = new BatchScheduler(lm, new SchedulerOptions { Parallel = 1, PrefixCaching = false });
        int[] prompt = [1, 5, 9, 13];
        var free = await Drain(scheduler.Submit(new CompletionRequest { Prompt = prompt, MaxTokens = 40, IgnoreEos = true }));
        string text = free.End.Text;
        Assume.That(text.Length, Is.GreaterThan(6), "the random model writes some text");
        string stop = text.Substring(text.Length / 2, 3);
        var stopped = await Drain(scheduler.Submit(new CompletionRequest { Prompt = prompt, MaxTokens = 40, IgnoreEos = true, Stop = [stop, "\u0001never"] }));
        Assert.That(stopped.End.Reason, Is.EqualTo(FinishReason.Stop));
        Assert.That(stopped.End.Text, Is.EqualTo(text[..text.IndexOf(stop, StringComparison.Ordinal)]));
    }

    [Test]
    public void Stop_sequences_hold_back_only_what_could_still_become_a_stop_string()
    {
        var s = new StopSequences(["END", "xy"]);
        Assert.That(s.Push("abcE"), Is.EqualTo("abc"));
        Assert.That(s.Push("N"), Is.EqualTo(""));
        Assert.That(s.Push("x"), Is.EqualTo("ENx"[..2]), "'EN' cannot become END once x follows; x may start xy");
        Assert.That(s.Push("z"), Is.EqualTo("xz"));
        Assert.That(s.Push("..EN"), Is.EqualTo(".."));
        Assert.That(s.Push("D and more"), Is.EqualTo(""));
        Assert.That(s.Stopped);
        Assert.That(s.Flush(), Is.EqualTo(""));
        var t = new StopSequences(["END"]);
        Assert.That(t.Push("tail E"), Is.EqualTo("tail "));
        Assert.That(t.Flush(), Is.EqualTo("E"), "held text comes out at the end");
        Assert.Throws<ArgumentException>(() => _ = new StopSequences([""]));
    }

    [Test]
    public async Task A_cancelled_request_frees_its_sequence_and_a_full_queue_refuses()
    {
        using var dir = new TempDir();
        using var lm = Load(dir);
        using var scheduler = new BatchScheduler(lm, new SchedulerOptions { Parallel = 1, MaxQueue = 1, PrefixCaching = false });
        using var cts = new CancellationTokenSource();
        var running = scheduler.Submit(new CompletionRequest { Prompt = [1, 2, 3], MaxTokens = 400, IgnoreEos = true }, cts.Token);
        var waiting = scheduler.Submit(new CompletionRequest { Prompt = [4, 5], MaxTokens = 3, IgnoreEos = true });
        var ex = Assert.Throws<SchedulerBusyException>(() => scheduler.Submit(new CompletionRequest { Prompt = [6], MaxTokens = 3 }));
        Assert.That(ex!.Message, Does.Contain("busy"));
        // the first has started: cancel it mid-generation
        Assert.That(await running.WaitToReadAsync(), Is.True);
        cts.Cancel();
        var cancelled = await Drain(running);
        Assert.That(cancelled.End.Reason, Is.EqualTo(FinishReason.Cancelled));
        Assert.That(cancelled.Tokens.Count, Is.LessThan(400));
        var next = await Drain(waiting);
        Assert.That(next.End.Reason, Is.EqualTo(FinishReason.Length));
        Assert.That(scheduler.Metrics().KvUsedBlocks, Is.Zero);
    }

    [Test]
    public void Impossible_requests_are_refused_with_the_reason()
    {
        using var dir = new TempDir();
        using var lm = Load(dir);
        using var scheduler = new BatchScheduler(lm, new SchedulerOptions { Parallel = 1 });
        Assert.That(Assert.Throws<ArgumentException>(() => scheduler.Submit(new CompletionRequest { Prompt = [] }))!.Message, Does.Contain("empty"));
        Assert.That(Assert.Throws<ArgumentException>(() => scheduler.Submit(new CompletionRequest { Prompt = [lm.Config.VocabSize] }))!.Message, Does.Contain("vocabulary"));
        Assert.That(Assert.Throws<ArgumentException>(() => scheduler.Submit(new CompletionRequest { Prompt = new int[512] }))!.Message, Does.Contain("context"));
        Assert.That(Assert.Throws<ArgumentException>(() => scheduler.Submit(new CompletionRequest { Prompt = [1], MaxTokens = 512 }))!.Message, Does.Contain("max_tokens"));
        Assert.Throws<ArgumentOutOfRangeException>(() => scheduler.Submit(new CompletionRequest { Prompt = [1], Sampling = new SamplingOptions { Temperature = -1 } }));
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new BatchScheduler(lm, new SchedulerOptions { Parallel = 0 }));
    }

    [Test]
    public void Logprobs_are_the_log_softmax_and_its_largest_entries()
    {
        float[] logits = [1f, 3f, 2f, 3f, -1f];
        double z = Math.Log(logits.Sum(l => Math.Exp(l)));
        var (lp, top) = BatchScheduler.Logprobs(logits, 2, 3);
        Assert.That(lp, Is.EqualTo(2 - z).Within(1e-6), "float32 logits, double sum: well inside 1e-6");
        Assert.That(top.Select(t => t.Token), Is.EqualTo(new[] { 1, 3, 2 }), "ties keep the lower id first");
        Assert.That(top[0].Logprob, Is.EqualTo(3 - z).Within(1e-6));
        Assert.That(BatchScheduler.Logprobs(logits, 0, 0).Top, Is.Empty);
    }

    /// <summary>
    /// Speculative decoding inside the batch (prompt-lookup drafts verified in the request's own rows):
    /// greedy output stays what plain decoding gives, drafts are proposed and some accepted, and the
    /// cache keeps only accepted entries (a later request reusing the cached blocks gets the same answer).
    /// </summary>
    [Test]
    public async Task Speculative_drafts_in_the_batch_leave_greedy_output_unchanged()
    {
        using var dir = new TempDir();
        using var lm = Load(dir);
        // repetitive prompts: lookup finds earlier continuations to propose
        int[][] prompts = [[.. Enumerable.Repeat(new[] { 5, 6, 7, 8, 9 }, 6).SelectMany(x => x)], [.. Enumerable.Range(0, 40).Select(i => 10 + i % 7)], [1, 2, 3]];
        async Task<List<(List<int> Tokens, EndEvent End)>> Run(int draft)
        {
            using var scheduler = new BatchScheduler(lm, new SchedulerOptions { Parallel = 3, SpeculativeDraft = draft });
            var results = await Task.WhenAll(prompts.Select(p => Drain(scheduler.Submit(new CompletionRequest { Prompt = p, MaxTokens = 40, IgnoreEos = true }))));
            // the cached blocks a draft passed through hold the accepted tokens only: the same prompt again, from the cache
            results = [.. results, await Drain(scheduler.Submit(new CompletionRequest { Prompt = [.. prompts[0], .. results[0].Tokens.Take(30)], MaxTokens = 8, IgnoreEos = true }))];
            var m = scheduler.Metrics();
            if (draft > 0)
            {
                Assert.That(m.DraftedTokens, Is.GreaterThan(0), "lookup proposed drafts");
                Assert.That(m.AcceptedTokens, Is.GreaterThan(0), "and the model agreed with some");
                Assert.That(m.Steps, Is.LessThan(m.GeneratedTokens - m.AcceptedTokens + prompts.Length + 4), "accepted drafts save steps");
                TestContext.Out.WriteLine($"drafted {m.DraftedTokens}, accepted {m.AcceptedTokens}, steps {m.Steps} for {m.GeneratedTokens} tokens");
            }
            Assert.That(m.KvUsedBlocks, Is.EqualTo(m.PrefixCachedBlocks));
            return [.. results];
        }
        var plain = await Run(0);
        var speculative = await Run(6);
        for (int i = 0; i < plain.Count; i++)
            Assert.That(speculative[i].Tokens, Is.EqualTo(plain[i].Tokens), $"request {i}");
        Assert.That(speculative[^1].End.CachedTokens, Is.GreaterThan(0));
    }

    /// <summary>
    /// A KV pool smaller than every request's whole context: requests wait for room, and when the
    /// running ones outgrow the pool the newest is preempted (its blocks freed, recomputed later) —
    /// every request still gets exactly what it gets alone, and nothing is cut short.
    /// </summary>
    [Test]
    public async Task A_small_pool_preempts_and_recomputes_without_changing_any_answer()
    {
        using var dir = new TempDir();
        using var lm = Load(dir);
        var rng = new Random(8);
        var prompts = Enumerable.Range(0, 4).Select(_ => Enumerable.Range(0, 40).Select(_ => rng.Next(lm.Config.VocabSize)).ToArray()).ToArray();
        var alone = new List<List<int>>();
        foreach (var p in prompts)
        {
            using var session = lm.CreateSession();
            alone.Add(session.Generate(p, new GenerationOptions { MaxTokens = 200, Sampling = SamplingOptions.Greedy, StopAtEndOfGeneration = false }).ToList());
        }
        // one context's worth (512 tokens) for four requests of 240 tokens each
        using var scheduler = new BatchScheduler(lm, new SchedulerOptions { Parallel = 3, KvPoolTokens = 512 });
        Assert.That(scheduler.KvPoolTokens, Is.EqualTo(512));
        var results = await Task.WhenAll(prompts.Select(p => Drain(scheduler.Submit(new CompletionRequest { Prompt = p, MaxTokens = 200, IgnoreEos = true }))));
        for (int i = 0; i < prompts.Length; i++)
        {
            Assert.That(results[i].End.Reason, Is.EqualTo(FinishReason.Length));
            Assert.That(results[i].Tokens, Is.EqualTo(alone[i]), $"request {i}");
        }
        var m = scheduler.Metrics();
        Assert.That(m.Preemptions, Is.GreaterThan(0), "the pool could not hold three requests' contexts");
        Assert.That(m.KvUsedBlocks, Is.EqualTo(m.PrefixCachedBlocks));
        TestContext.Out.WriteLine($"{m.Preemptions} preemptions, {m.Steps} steps");
    }

    [Test]
    public async Task Identical_prompts_submitted_together_are_prefilled_once()
    {
        using var dir = new TempDir();
        using var lm = Load(dir);
        var rng = new Random(9);
        int[] prompt = Enumerable.Range(0, 300).Select(_ => rng.Next(lm.Config.VocabSize)).ToArray();
        using var scheduler = new BatchScheduler(lm, new SchedulerOptions { Parallel = 4, PrefillChunk = 64 });
        // n = 4 of one request, sampled with different seeds
        var results = await Task.WhenAll(Enumerable.Range(0, 4).Select(i => Drain(scheduler.Submit(new CompletionRequest
        {
            Prompt = prompt, MaxTokens = 6, IgnoreEos = true, Sampling = new SamplingOptions { Temperature = 1, Seed = (ulong)i },
        }))));
        Assert.That(results[0].End.CachedTokens, Is.Zero);
        Assert.That(results.Skip(1).Select(r => r.End.CachedTokens), Is.All.EqualTo(288), "the others start from its nine whole blocks");
        Assert.That(scheduler.Metrics().PromptTokens - scheduler.Metrics().CachedPromptTokens, Is.EqualTo(300 + 3 * 12));
    }
}
