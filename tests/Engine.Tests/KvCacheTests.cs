using Engine.Api;
using Engine.Backends;
using Engine.Cache;

namespace Engine.Tests;

/// <summary>
/// KV-cache rollback, fork and compaction, and tree-masked verification: the operations speculative
/// decoding is built on. Comparisons are exact where the engine repeats the very same float operations
/// (a rolled-back sequence recomputing the same tokens) and within a tight tolerance where the batch
/// differs (tree rows vs. one token at a time: the same arithmetic per row, but kept loose enough that a
/// future batched kernel with another summation order still passes).
/// </summary>
public unsafe class KvCacheTests
{
    private static TempDir? s_dir;
    private static LanguageModel? s_model;

    [OneTimeSetUp]
    public void Load()
    {
        s_dir = new TempDir();
        var model = TinyModel.Random(new TinySpec("kv", Heads: 4, KvHeads: 2, Layers: 2, Seed: 21));
        s_model = LanguageModel.Load(model.WriteGguf(s_dir.File("m.gguf")), new ModelOptions { Threads = 2 });
    }

    [OneTimeTearDown]
    public void Unload()
    {
        s_model?.Dispose();
        s_dir?.Dispose();
    }

    private static LanguageModel Model => s_model!;

    private static int Vocab => Model.Config.VocabSize;

    private static readonly int[] Prefix = [256, 5, 17, 200, 33, 42, 9, 120, 64, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31];

    /// <summary>Runs tokens causally at the next positions; returns the logits of every row.</summary>
    private static float[] Run(KvSequence seq, params int[] tokens)
    {
        int start = seq.Length;
        var logits = new float[tokens.Length * Vocab];
        Model.Network.Forward(seq, tokens, Enumerable.Range(start, tokens.Length).ToArray(), AttentionMask.Causal,
            Enumerable.Range(0, tokens.Length).ToArray(), logits);
        return logits;
    }

    private static float[] LastRow(float[] logits) => logits[^Vocab..];

    [Test]
    public void Rollback_is_exact()
    {
        using var cache = Model.Network.CreateKvCache(256, blockSize: 16);
        using var fresh = cache.CreateSequence();
        Run(fresh, Prefix);
        var expected = Run(fresh, 70, 71, 72);

        using var rolled = cache.CreateSequence();
        Run(rolled, Prefix);
        Run(rolled, 300, 301, 302, 303, 304, 305, 306, 307, 308, 309, 310, 311, 312, 313, 314, 315, 316, 317); // rejected draft, crosses a block boundary
        rolled.Truncate(Prefix.Length);
        Assert.That(rolled.Length, Is.EqualTo(Prefix.Length));
        Assert.That(Run(rolled, 70, 71, 72), Is.EqualTo(expected), "logits after rollback are bit-identical");
    }

    [Test]
    public void Fork_shares_the_prefix_and_copies_only_on_write()
    {
        using var cache = Model.Network.CreateKvCache(512, blockSize: 16);
        using var parent = cache.CreateSequence();
        Run(parent, Prefix); // 40 tokens: blocks 0, 1 full, block 2 partial
        int used = cache.UsedBlocks;
        Assert.That(used, Is.EqualTo(3));

        using var child = parent.Fork();
        Assert.That(cache.UsedBlocks, Is.EqualTo(used), "a fork copies nothing");
        Assert.That(child.Blocks, Is.EqualTo(parent.Blocks));

        var childLogits = Run(child, 90, 91);
        Assert.That(cache.UsedBlocks, Is.EqualTo(used + 1), "the child copied only the partial block it wrote into");
        Assert.That(child.Blocks.Take(2), Is.EqualTo(parent.Blocks.Take(2)), "full blocks stay shared");
        var parentLogits = Run(parent, 95);

        using var reference = cache.CreateSequence();
        Run(reference, Prefix);
        using var reference2 = cache.CreateSequence();
        Run(reference2, Prefix);
        Assert.That(childLogits, Is.EqualTo(Run(reference, 90, 91)), "the child continues the shared prefix");
        Assert.That(parentLogits, Is.EqualTo(Run(reference2, 95)), "the parent never sees the child's tokens");

        child.Dispose();
        reference.Dispose();
        reference2.Dispose();
        Assert.That(cache.UsedBlocks, Is.EqualTo(3), "disposing sequences frees their blocks");
    }

    [Test]
    public void Tree_verification_matches_running_each_path_one_token_at_a_time()
    {
        //            prefix
        //           /      \
        //         a(0)     b(1)
        //        /   \        \
        //     c(2)   d(3)     e(4)
        //      |
        //     f(5)
        int[] tokens = [101, 102, 103, 104, 105, 106];
        int[] parents = [-1, -1, 0, 0, 1, 2];
        int[] depth = [0, 0, 1, 1, 1, 2];
        using var cache = Model.Network.CreateKvCache(512);
        using var seq = cache.CreateSequence();
        Run(seq, Prefix);
        int n = tokens.Length;
        var logits = new float[n * Vocab];
        Model.Network.Forward(seq, tokens, depth.Select(d => Prefix.Length + d).ToArray(), AttentionMask.FromParents(parents),
            Enumerable.Range(0, n).ToArray(), logits);

        for (int node = 0; node < n; node++)
        {
            var path = new List<int>();
            for (int p = node; p >= 0; p = parents[p])
                path.Insert(0, tokens[p]);
            using var sequential = cache.CreateSequence();
            Run(sequential, Prefix);
            float[] last = [];
            foreach (int t in path)
                last = Run(sequential, t);
            AssertClose(logits.AsSpan(node * Vocab, Vocab), last, $"node {node}");
        }
    }

    [Test]
    public void Compacting_the_accepted_path_leaves_the_cache_as_if_it_were_decoded()
    {
        int[] tokens = [101, 102, 103, 104];
        int[] parents = [-1, 0, 0, 2]; // a → b, a → c → d
        int[] depth = [0, 1, 1, 2];
        using var cache = Model.Network.CreateKvCache(512, blockSize: 16);
        using var seq = cache.CreateSequence();
        Run(seq, Prefix);
        var logits = new float[tokens.Length * Vocab];
        Model.Network.Forward(seq, tokens, depth.Select(d => Prefix.Length + d).ToArray(), AttentionMask.FromParents(parents), [0, 1, 2, 3], logits);

        // Accept a → c → d (offsets 0, 2, 3), drop b; then decode one more token.
        seq.Compact(Prefix.Length, [0, 2, 3]);
        Assert.That(seq.Length, Is.EqualTo(Prefix.Length + 3));
        var next = Run(seq, 50);

        using var plain = cache.CreateSequence();
        Run(plain, Prefix);
        Run(plain, 101, 103, 104);
        AssertClose(next, Run(plain, 50), "after compaction");
    }

    [Test]
    public void A_full_cache_is_an_error_that_leaves_the_sequence_intact()
    {
        using var cache = Model.Network.CreateKvCache(48, blockSize: 16);
        using var seq = cache.CreateSequence();
        Run(seq, Prefix);
        var e = Assert.Throws<KvCacheFullException>(() => Run(seq, 1, 2, 3, 4, 5, 6, 7, 8, 9))!;
        Assert.That(e.Message, Does.Contain("48"));
        Assert.That(seq.Length, Is.EqualTo(Prefix.Length));
        Assert.That(Run(seq, 1), Has.Length.EqualTo(Vocab), "the sequence still works");
    }

    [Test]
    public void A_reserved_pool_makes_every_block_at_once_and_computes_the_same()
    {
        using var lazy = Model.Network.CreateKvCache(256, blockSize: 16);
        using var lazySeq = lazy.CreateSequence();
        var expected = Run(lazySeq, Prefix);
        Assert.That(lazy.CreatedBlocks, Is.EqualTo(3), "made on demand: 40 tokens in blocks of 16");

        using var reserved = Model.Network.CreateKvCache(256, blockSize: 16);
        reserved.Reserve();
        Assert.That((reserved.CreatedBlocks, reserved.UsedBlocks, reserved.FreeBlocks), Is.EqualTo((16, 0, 16)));
        using var seq = reserved.CreateSequence();
        // the same blocks' arithmetic: bit for bit
        Assert.That(Run(seq, Prefix), Is.EqualTo(expected));
        Assert.That((reserved.CreatedBlocks, reserved.UsedBlocks), Is.EqualTo((16, 3)), "no block made after the reservation");
        Assert.That(seq.BlockTable.ToArray(), Is.EqualTo(new[] { 0, 1, 2 }), "handed out lowest first, as on demand");
        var e = Assert.Throws<InvalidOperationException>(reserved.Reserve)!;
        Assert.That(e.Message, Does.Contain("3 blocks are held"));

        using var small = Model.Network.CreateKvCache(48, blockSize: 16);
        small.Reserve();
        using var full = small.CreateSequence();
        Run(full, Prefix);
        Assert.Throws<KvCacheFullException>(() => Run(full, 1, 2, 3, 4, 5, 6, 7, 8, 9), "a reserved pool still ends at its size");
        Assert.That(full.Length, Is.EqualTo(Prefix.Length));
    }

    [Test]
    public void Reserving_commits_the_memory_of_large_blocks_at_once()
    {
        if (!OperatingSystem.IsLinux())
            Assert.Ignore("reads the resident set from /proc/self/statm (Linux)");
        // blocks of 512 KiB: carved from the huge-page arenas (KvArena), committed by MADV_POPULATE_WRITE
        using var backend = new Engine.Backends.Cpu.CpuBackend(1, kvCacheType: Engine.Tensors.GgmlType.F16);
        var layout = new KvLayout(Layers: 8, KvHeads: 8, HeadDim: 64, BlockSize: 32);
        const int blocks = 64;
        long poolBytes = blocks * 2L * layout.Layers * layout.LayerBlockFloats * sizeof(ushort); // 32 MiB
        long before = Resident();
        using var lazy = new KvCache(backend, layout, blocks * 32, blocks * 32);
        lazy.Store.EnsureBlock(blocks - 1);
        long made = Resident() - before;
        using var reserved = new KvCache(backend, layout, blocks * 32, blocks * 32);
        long beforeReserve = Resident();
        reserved.Reserve();
        long committed = Resident() - beforeReserve;
        TestContext.Out.WriteLine($"resident: {made >> 20} MiB for {blocks} blocks made, {committed >> 20} MiB for {blocks} reserved ({poolBytes >> 20} MiB)");
        // Margins: the test process's own heap moves by a few MiB between readings, far less than the pool
        Assert.That(committed, Is.GreaterThan(poolBytes * 3 / 4), "a reserved pool is resident at once");
        Assert.That(made, Is.LessThan(poolBytes / 4), "blocks only made are not (mapped, untouched)");

        var block = (byte*)((Engine.Backends.Cpu.CpuKvStore)reserved.Store).Pointers[blocks - 1];
        Assert.That(new ReadOnlySpan<byte>(block, 1 << 19).IndexOfAnyExcept((byte)0), Is.EqualTo(-1), "committed blocks read as zeros");
    }

    /// <summary>This process's resident set in bytes (/proc/self/statm's second field, in pages).</summary>
    private static long Resident() =>
        long.Parse(File.ReadAllText("/proc/self/statm").Split(' ')[1], System.Globalization.CultureInfo.InvariantCulture) * Environment.SystemPageSize;

    [Test]
    public void Bad_forward_arguments_are_rejected_before_any_work()
    {
        using var cache = Model.Network.CreateKvCache(64);
        using var seq = cache.CreateSequence();
        var logits = new float[Vocab];
        Assert.Throws<ArgumentOutOfRangeException>(() => Model.Network.Forward(seq, [Vocab], [0], AttentionMask.Causal, [0], logits));
        Assert.Throws<ArgumentException>(() => Model.Network.Forward(seq, [1, 2], [0], AttentionMask.Causal, [0], logits));
        Assert.Throws<ArgumentException>(() => Model.Network.Forward(seq, [1, 2], [0, 1], AttentionMask.FromParents([-1]), [0], logits));
        Assert.Throws<ArgumentOutOfRangeException>(() => Model.Network.Forward(seq, [1], [0], AttentionMask.Causal, [1], logits));
        Assert.That(seq.Length, Is.Zero);
        Assert.Throws<ArgumentException>(() => AttentionMask.FromParents([-1, 2, 0]), "a parent must come before its child");
    }

    private static void AssertClose(ReadOnlySpan<float> actual, float[] expected, string what)
    {
        float scale = expected.Max(MathF.Abs);
        for (int i = 0; i < expected.Length; i++)
            Assert.That(actual[i], Is.EqualTo(expected[i]).Within(1e-5f * scale), $"{what}, logit {i}");
    }
}
