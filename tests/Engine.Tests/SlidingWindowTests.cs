using Engine.Api;
using Engine.Backends;
using Engine.Backends.Cpu;
using Engine.Backends.Cpu.Kernels;

namespace Engine.Tests;

/// <summary>
/// Sliding-window attention and soft-capped scores (Gemma 2/3, Mistral, Phi-3) in every attention the
/// engine has: the CPU backend's, and the CPU references of the CUDA kernels (split, tiled prefill,
/// tree), each against a direct double-precision computation of the definition — a row at position p
/// sees the keys at positions p − window + 1 .. p that it would see without a window, and its scores
/// s become cap·tanh(s / cap).
/// </summary>
public class SlidingWindowTests
{
    private const double U = 1.0 / (1 << 24);

    private static float[] RandomFloats(Random rng, int n) => Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray();

    /// <summary>
    /// (heads, kvHeads, headDim, blockSize, prefix, n, tree, window, softCap): windows that end mid-block,
    /// that cut into the batch itself (a causal prefill longer than the window), trees deeper than the
    /// window (an ancestor falls out), windows wider than the whole context.
    /// </summary>
    public static IEnumerable<TestCaseData> Cases()
    {
        yield return new TestCaseData(4, 2, 16, 8, 40, 1, false, 7, 0f).SetName("window: decode after 40, window 7");
        yield return new TestCaseData(4, 2, 16, 8, 40, 1, false, 7, 1.5f).SetName("window: decode after 40, window 7, soft cap 1.5");
        yield return new TestCaseData(2, 1, 32, 16, 3, 30, false, 5, 0f).SetName("window: causal 30 after 3, window 5 (inside the batch)");
        yield return new TestCaseData(4, 4, 24, 32, 100, 12, true, 4, 2f).SetName("window: tree of 12 after 100, window 4 (ancestors fall out)");
        yield return new TestCaseData(2, 2, 8, 8, 200, 70, true, 9, 0f).SetName("window: tree of 70 (two mask words) after 200, window 9");
        yield return new TestCaseData(4, 2, 16, 8, 10, 5, false, 500, 3f).SetName("window: wider than the context, soft cap 3");
    }

    /// <summary>Positions of a pass: prefix + i for a causal batch, prefix + depth for a tree.</summary>
    internal static int[] Positions(int prefix, int n, int[]? parents)
    {
        var positions = new int[n];
        for (int i = 0; i < n; i++)
            positions[i] = parents is null ? prefix + i : parents[i] < 0 ? prefix : positions[parents[i]] + 1;
        return positions;
    }

    /// <summary>
    /// The definition in double precision: row i (position pos[i]) sees committed slot t (position t) and
    /// batch token j (position pos[j], when the mask allows) whose position lies in the window.
    /// k, v: [tokens, kvHeads·hd] with the batch at rows prefix.. .
    /// </summary>
    internal static double[] Reference(float[] q, float[] k, float[] v, int n, int heads, int kvHeads, int hd, int prefix, AttentionMask mask,
        int[] positions, int window, float softCap, float scale)
    {
        var result = new double[n * heads * hd];
        int group = heads / kvHeads;
        for (int i = 0; i < n; i++)
        {
            var seen = new List<int>();
            for (int t = 0; t < prefix + n; t++)
            {
                int position = t < prefix ? t : positions[t - prefix];
                bool visible = t < prefix || (mask.IsCausal ? t - prefix <= i : mask.Allows(i, t - prefix));
                if (visible && positions[i] - position < window)
                    seen.Add(t);
            }
            for (int h = 0; h < heads; h++)
            {
                int kvh = h / group;
                var scores = seen.Select(t =>
                {
                    double dot = 0;
                    for (int d = 0; d < hd; d++)
                        dot += (double)q[(i * heads + h) * hd + d] * k[(t * kvHeads + kvh) * hd + d];
                    double s = dot * scale;
                    return softCap > 0 ? softCap * Math.Tanh(s / softCap) : s;
                }).ToArray();
                double max = scores.Max(), sum = scores.Sum(s => Math.Exp(s - max));
                for (int j = 0; j < seen.Count; j++)
                {
                    double p = Math.Exp(scores[j] - max) / sum;
                    for (int d = 0; d < hd; d++)
                        result[(i * heads + h) * hd + d] += p * v[(seen[j] * kvHeads + kvh) * hd + d];
                }
            }
        }
        return result;
    }

    [TestCaseSource(nameof(Cases))]
    public void Every_attention_applies_the_window_and_the_soft_cap(int heads, int kvHeads, int headDim, int blockSize, int prefix, int n, bool tree,
        int window, float softCap)
    {
        var layout = new KvLayout(Layers: 2, KvHeads: kvHeads, HeadDim: headDim, BlockSize: blockSize);
        int layer = 1, tokens = prefix + n, blocks = (tokens + blockSize - 1) / blockSize + 2;
        var rng = new Random(heads * 1000 + prefix + n + window);
        var table = Enumerable.Range(0, blocks).OrderBy(_ => rng.Next()).Take((tokens + blockSize - 1) / blockSize).ToArray();
        var k = RandomFloats(rng, tokens * kvHeads * headDim);
        var v = RandomFloats(rng, tokens * kvHeads * headDim);
        var q = RandomFloats(rng, n * heads * headDim);
        var parents = tree ? Enumerable.Range(0, n).Select(i => i == 0 ? -1 : rng.Next(Math.Max(-1, i - 4), i)).ToArray() : null; // deep trees
        var mask = parents is null ? AttentionMask.Causal : AttentionMask.FromParents(parents);
        var positions = Positions(prefix, n, parents);
        float scale = 1 / MathF.Sqrt(headDim);
        var expected = Reference(q, k, v, n, heads, kvHeads, headDim, prefix, mask, positions, window, softCap, scale);

        var sliding = new SlidingWindow();
        sliding.Set(window, positions, mask);
        Assert.That(sliding.Starts.ToArray(), Is.EqualTo(positions.Select(p => Math.Max(0, p - window + 1)).ToArray()));

        // The CPU references of the CUDA kernels, on the device layout.
        var cache = new float[blocks * KvCacheKernels.BlockFloats(layout)];
        KvCacheKernels.StoreKvF32(k, v, tokens, table, 0, cache, layout, layer);
        var split = new float[q.Length];
        KvCacheKernels.AttentionF32(q, n, heads, cache, layout, layer, table, prefix, sliding.Mask, scale, split, softCap, sliding.Starts);
        var tiled = new float[q.Length];
        KvCacheKernels.AttentionPrefillF32(q, n, heads, cache, layout, layer, table, prefix, sliding.Mask, scale, tiled, softCap, sliding.Starts);
        var treeKernel = new float[q.Length];
        Backends.Cpu.Kernels.TreeAttention.TreeAttentionF32(q, n, heads, cache, layout, layer, table, prefix, sliding.Mask, scale, treeKernel, softCap, sliding.Starts);

        // The CPU backend's own attention, on its layout.
        using var cpu = new CpuBackend(1);
        using var store = CpuKvFixture.Filled(cpu, layout, blocks, layer, table, k, v);
        using var qb = CpuKvFixture.Upload(cpu, q);
        using var ob = cpu.Allocate(q.Length);
        cpu.Attention(new Activation(qb, n, heads * headDim), store, layer, table, prefix, sliding.Mask, heads, scale, new Activation(ob, n, heads * headDim),
            softCap: softCap, windowStarts: sliding.Starts);
        var backend = ((CpuBuffer)ob).Data;

        // Float32 against double: scores of headDim products of values in [-2, 2] (|q·k·scale| ≤ 4·√hd),
        // tanh and exp within a few ulps, weighted sums over ≤ 270 keys of values in [-2, 2]:
        // 2·(keys + headDim)·u·4·√hd bounds what float32 rounding can do to an output of magnitude ≤ 2.
        double bound = 2.0 * (tokens + headDim) * U * 4 * Math.Sqrt(headDim) + 1e-6;
        foreach (var (name, actual) in new[] { ("cpu backend", backend), ("split", split), ("tiled", tiled), ("tree", treeKernel) })
        {
            for (int i = 0; i < expected.Length; i++)
                Assert.That(actual[i], Is.EqualTo(expected[i]).Within(bound), $"{name}: row {i / (heads * headDim)}, head {i / headDim % heads}, dim {i % headDim}");
        }
    }

    /// <summary>A tree's windowed mask drops exactly the ancestors whose depth lies a window or more above the node's.</summary>
    [Test]
    public void A_windowed_tree_mask_drops_the_ancestors_outside_the_window()
    {
        int[] parents = [-1, 0, 1, 2, 3, 0];
        var mask = AttentionMask.FromParents(parents);
        var positions = Positions(10, parents.Length, parents); // depths 0 1 2 3 4 1
        var windowed = mask.Windowed(positions, 3, null);
        Assert.That(Enumerable.Range(0, 6).Where(j => windowed.Allows(4, j)), Is.EqualTo(new[] { 2, 3, 4 }));
        Assert.That(Enumerable.Range(0, 6).Where(j => windowed.Allows(5, j)), Is.EqualTo(new[] { 0, 5 }));
        Assert.That(Enumerable.Range(0, 6).Where(j => mask.Allows(4, j)), Is.EqualTo(new[] { 0, 1, 2, 3, 4 }), "the original is untouched");
        Assert.Throws<InvalidOperationException>(() => AttentionMask.Causal.Windowed(positions, 3, null));
    }

    [Test]
    public void Impossible_attention_options_are_refused_by_name()
    {
        using var cpu = new CpuBackend(1);
        var layout = new KvLayout(Layers: 1, KvHeads: 1, HeadDim: 8, BlockSize: 8);
        using var store = cpu.CreateKvStore(layout, 1);
        store.EnsureBlock(0);
        using var qb = cpu.Allocate(16);
        using var ob = cpu.Allocate(16);
        var q = new Activation(qb, 2, 8);
        var o = new Activation(ob, 2, 8);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => cpu.Attention(q, store, 0, [0], 0, AttentionMask.Causal, 1, 1f, o, softCap: -1f))!;
        Assert.That(e.Message, Does.Contain("soft cap of -1"));
        Assert.Throws<ArgumentOutOfRangeException>(() => cpu.Attention(q, store, 0, [0], 0, AttentionMask.Causal, 1, 1f, o, softCap: float.NaN));
        var w = Assert.Throws<ArgumentException>(() => cpu.Attention(q, store, 0, [0], 0, AttentionMask.Causal, 1, 1f, o, windowStarts: [0]))!;
        Assert.That(w.Message, Does.Contain("1 window starts for 2 rows"));
    }
}

/// <summary>
/// A model whose every layer attends through the window keeps only the KV blocks the window still sees:
/// its cache's pool is sized by the window, not the context, and decoding far past the pool's size
/// still gives the reference's logits.
/// </summary>
public class WindowedCacheTests
{
    internal static readonly TinySpec Spec = new("phi3-window-cache", Arch: "phi3", Heads: 4, KvHeads: 2, Seed: 44, SlidingWindow: 6, Context: 512);

    /// <summary>Random tokens of the spec's vocabulary, the same every run.</summary>
    internal static int[] Tokens(int count) => Enumerable.Range(0, count).Select(i => (i * 37 + 11) % 300).ToArray();

    /// <summary>
    /// Decodes <paramref name="tokens"/> after a prompt of 22 (passes of 4) with a cache of 4-token blocks,
    /// checking every step's logits against the reference (within <paramref name="tolerance"/> of their
    /// scale) and the pool against its bound.
    /// </summary>
    internal static void DecodeFarPastThePool(LanguageModel lm, TinyModel model, int tokens, double tolerance = 2e-5)
    {
        var all = Tokens(tokens);
        var reference = model.ReferenceLogits(all);
        double scale = reference.SelectMany(r => r).Max(Math.Abs);
        using var cache = lm.Network.CreateKvCache(tokens, blockSize: 4);
        // every layer windowed: the cache itself follows the window; windowed and global layers: its local part does
        var windowed = cache.Local ?? cache;
        Assert.That((windowed.Window, windowed.WindowSlack), Is.EqualTo((model.Spec.SlidingWindow, lm.Network.MaxBatch)));
        Assert.That(windowed.MaxBlocks * windowed.BlockSize, Is.LessThan(tokens / 2), "the pool is sized by the window");
        using var seq = cache.CreateSequence();
        var windowedSeq = seq.Local ?? seq;
        int vocab = lm.Config.VocabSize, prompt = 22;
        var logits = new float[prompt * vocab];
        lm.Network.Forward(seq, all.AsSpan(0, prompt), Enumerable.Range(0, prompt).ToArray(), AttentionMask.Causal, Enumerable.Range(0, prompt).ToArray(), logits);
        for (int t = 0; t < prompt; t++)
            ModelParityTests.AssertRow(logits.AsSpan(t * vocab, vocab), reference[t], scale, $"prompt row {t}", tolerance);
        var one = new float[vocab];
        for (int t = prompt; t < tokens; t++)
        {
            lm.Network.Forward(seq, [all[t]], [t], AttentionMask.Causal, [0], one);
            ModelParityTests.AssertRow(one, reference[t], scale, $"step {t}", tolerance);
            Assert.That(windowed.UsedBlocks, Is.LessThanOrEqualTo(windowed.MaxBlocks));
        }
        Assert.That(windowedSeq.FirstHeldSlot, Is.GreaterThan(tokens / 2), "the early blocks were released");
        if (cache.Local is not null)
            Assert.That((seq.FirstHeldSlot, cache.UsedBlocks), Is.EqualTo((0, (tokens + 3) / 4)), "the global layers keep the whole context");

        // Rolling back a pass's worth works (a rejected draft, a token run again); further does not, by name.
        seq.Truncate(tokens - 2);
        lm.Network.Forward(seq, [all[tokens - 2]], [tokens - 2], AttentionMask.Causal, [0], one);
        ModelParityTests.AssertRow(one, reference[tokens - 2], scale, "after a rollback", tolerance);
        var e = Assert.Throws<InvalidOperationException>(() => seq.Truncate(10))!;
        Assert.That(e.Message, Does.Contain($"sliding window of {model.Spec.SlidingWindow}"));
        Assert.That(seq.Length, Is.EqualTo(tokens - 1), "a refused rollback changes nothing");
        seq.Truncate(0);
        Assert.That((cache.UsedBlocks, windowed.UsedBlocks), Is.EqualTo((0, 0)), "starting over frees everything");
    }

    [Test]
    public void Decoding_past_the_pool_gives_the_reference_logits_on_the_cpu()
    {
        var model = TinyModel.Random(Spec);
        using var dir = new TempDir();
        using var lm = LanguageModel.Load(model.WriteGguf(dir.File("m.gguf")), new ModelOptions { Threads = 1, MaxBatch = 4 });
        DecodeFarPastThePool(lm, model, 120);
    }

    /// <summary>The memory plan counts the windowed layers' pool, not the context, for them (4096 tokens, 32-token blocks, passes of 4).</summary>
    [Test]
    public void The_memory_plan_counts_windowed_layers_by_their_pool()
    {
        using var dir = new TempDir();
        foreach (var (spec, windowedLayers) in new[] { (Spec, 2), (HybridSpec, 1), (Spec with { SlidingWindow = 0 }, 0) })
        {
            string path = TinyModel.Random(spec).WriteGguf(dir.File(spec.Name + spec.SlidingWindow + ".gguf"));
            using var lm = LanguageModel.Load(path, new ModelOptions { Threads = 1 });
            using var weights = new Models.GgufWeightSource(Formats.Gguf.GgufFile.Open(path));
            var plan = Backends.MemoryPlan.For(path, lm.Config, weights, lm.Backend, 4096, 4);
            long pool = (LlamaModelWindowPool(spec.SlidingWindow) + 31) / 32 * 32;
            long expected = (4096L * (2 - windowedLayers) + pool * windowedLayers) * 2 * lm.Config.KvDim * 4;
            Assert.That(plan.Parts.Single(p => p.Part.StartsWith("KV cache", StringComparison.Ordinal)).Bytes, Is.EqualTo(expected), spec.Name);
        }
        static long LlamaModelWindowPool(int window) => Models.LlamaModel.WindowPoolTokens(Math.Max(window, 1), 4, 32);
    }

    internal static readonly TinySpec HybridSpec = new("gemma2-hybrid-cache", Arch: "gemma2", Heads: 4, KvHeads: 2, Tied: true, Seed: 45, SlidingWindow: 6,
        Context: 512, AttnSoftCap: 2f);

    /// <summary>
    /// Gemma 2: its windowed layer (layer 0) lives in the cache's local part, which follows the window; its
    /// global layer keeps the whole context — both stay at the sequence's length through decoding,
    /// rollback and release.
    /// </summary>
    [Test]
    public void Windowed_and_global_layers_decode_past_the_local_pool_on_the_cpu()
    {
        var model = TinyModel.Random(HybridSpec);
        using var dir = new TempDir();
        using var lm = LanguageModel.Load(model.WriteGguf(dir.File("m.gguf")), new ModelOptions { Threads = 1, MaxBatch = 4 });
        using (var cache = lm.Network.CreateKvCache(120, blockSize: 4))
            Assert.That((cache.Place(0), cache.Place(1), cache.Layout.Layers, cache.Local!.Layout.Layers), Is.EqualTo(((true, 0), (false, 0), 1, 1)));
        DecodeFarPastThePool(lm, model, 120);
    }
}
