using Engine.Api;
using Engine.Backends;
using Engine.Backends.Cpu.Kernels;
using Engine.Cuda;
using Engine.Sampling;

namespace Engine.Tests;

/// <summary>
/// The speculative kernels (tree attention, fused sampling, draft-verify acceptance) on the device or
/// the emulator, against their CPU references and against the properties exact speculative decoding
/// needs: a verified node's attention equals the same token's decode attention bit for bit.
/// </summary>
public abstract partial class GpuSuite
{
    private (float[] Cache, int[] Table, int Blocks) RandomCache(Random rng, KvLayout layout, int layer, int tokens, out float[] k, out float[] v)
    {
        int blocks = (tokens + layout.BlockSize - 1) / layout.BlockSize + 3;
        var table = Enumerable.Range(0, blocks).OrderBy(_ => rng.Next()).Take((tokens + layout.BlockSize - 1) / layout.BlockSize).ToArray();
        k = RandomFloats(rng, tokens * layout.KvHeads * layout.HeadDim);
        v = RandomFloats(rng, tokens * layout.KvHeads * layout.HeadDim);
        var cache = new float[blocks * KvCacheKernels.BlockFloats(layout)];
        KvCacheKernels.StoreKvF32(k, v, tokens, table, 0, cache, layout, layer);
        return (cache, table, blocks);
    }

    /// <summary>The cache as a binary16 cache holds it: each value rounded to the nearest half (what store_kv_f16 writes).</summary>
    private static float[] RoundToHalf(float[] cache) => cache.Select(v => (float)(Half)v).ToArray();

    private float[] RunTreeAttention(float[] q, int n, int heads, float[] cache, int blocks, KvLayout layout, int layer, int[] table, int prefix,
        AttentionMask mask, bool f16 = false)
    {
        if (f16)
        {
            using var half = Device.Upload<Half>(cache.Select(v => (Half)v).ToArray());
            return RunTreeAttention(q, n, heads, half.Span, blocks, layout, layer, table, prefix, mask);
        }
        using var single = Device.Upload<float>(cache);
        return RunTreeAttention(q, n, heads, single.Span, blocks, layout, layer, table, prefix, mask);
    }

    private float[] RunTreeAttention<T>(float[] q, int n, int heads, DeviceSpan<T> dcache, int blocks, KvLayout layout, int layer, int[] table, int prefix,
        AttentionMask mask) where T : unmanaged
    {
        using var dt = Device.Upload<int>(table);
        using var dq = Device.Upload<float>(q);
        using var dmask = mask.IsCausal ? null : Device.Upload<ulong>(mask.Bits[..(n * mask.WordsPerRow)]);
        using var scratch = Device.Allocate<float>(KvCacheKernels.ScratchFloats(heads, n, layout.HeadDim, prefix + n));
        using var dout = Device.Allocate<float>((long)n * heads * layout.HeadDim);
        Cuda.Kernels.TreeAttention.TreeAttentionF32(Device, dq, n, heads, dcache, blocks, layout, layer, dt, table.Length, prefix,
            dmask?.Span ?? default, mask.IsCausal ? 0 : mask.WordsPerRow, 1 / MathF.Sqrt(layout.HeadDim), scratch, dout);
        return Device.Download<float>(dout);
    }

    public static IEnumerable<TestCaseData> TreeAttentionCases()
    {
        yield return new TestCaseData(8, 2, 64, 16, 37, 1, false, false).SetName("tree attention: decode after 37, GQA 4:1");
        yield return new TestCaseData(32, 4, 64, 32, 300, 16, true, false).SetName("tree attention: 16 nodes after 300 (staged tiles, two splits), GQA 8:1");
        yield return new TestCaseData(4, 1, 128, 32, 100, 70, true, false).SetName("tree attention: 70 nodes (two mask words) after 100, MQA, head dim 128");
        yield return new TestCaseData(4, 4, 96, 8, 5, 9, false, false).SetName("tree attention: chain of 9 after 5, head dim 96");
        yield return new TestCaseData(8, 8, 8, 32, 0, 3, true, false).SetName("tree attention: tree of 3 with no prefix, head dim 8");
        yield return new TestCaseData(32, 4, 64, 32, 300, 16, true, true).SetName("tree attention: 16 nodes after 300 over an F16 cache");
        yield return new TestCaseData(8, 2, 64, 16, 37, 1, false, true).SetName("tree attention: decode after 37 over an F16 cache");
    }

    /// <summary>
    /// tree_attention_f32 against its CPU reference, which does the kernel's float operations in the
    /// kernel's order: on the emulator (the host's expf and fmaf, as .NET's) the results are identical;
    /// a GPU's expf may differ from the host's by an ulp or two, which moves a normalized output by a
    /// few ulps of the largest value (outputs are convex combinations of values in [-2, 2]).
    /// </summary>
    [TestCaseSource(nameof(TreeAttentionCases))]
    public void Tree_attention_matches_its_cpu_reference(int heads, int kvHeads, int headDim, int blockSize, int prefix, int n, bool tree, bool f16)
    {
        var layout = new KvLayout(Layers: 2, KvHeads: kvHeads, HeadDim: headDim, BlockSize: blockSize);
        var rng = new Random(heads * 7919 + prefix * 31 + n);
        var (cache, table, blocks) = RandomCache(rng, layout, 1, prefix + n, out _, out _);
        if (f16)
            cache = RoundToHalf(cache); // the reference reads the values an F16 cache holds; the kernel widens them exactly
        var q = RandomFloats(rng, n * heads * headDim);
        var mask = tree ? AttentionMask.FromParents(Enumerable.Range(0, n).Select(i => i == 0 ? -1 : rng.Next(-1, i)).ToArray()) : AttentionMask.Causal;
        var expected = new float[q.Length];
        Backends.Cpu.Kernels.TreeAttention.TreeAttentionF32(q, n, heads, cache, layout, 1, table, prefix, mask, 1 / MathF.Sqrt(headDim), expected);
        var actual = RunTreeAttention(q, n, heads, cache, blocks, layout, 1, table, prefix, mask, f16);
        double bound = Device.IsEmulator ? 0 : 8 * 2 * U * 2;
        for (int i = 0; i < expected.Length; i++)
            Assert.That(actual[i], Is.EqualTo(expected[i]).Within(bound), $"row {i / (heads * headDim)}, head {i / headDim % heads}, dim {i % headDim}");

        // And the plain split attention (a different order of the same sums): the bound of the attention test.
        var split = new float[q.Length];
        KvCacheKernels.AttentionF32(q, n, heads, cache, layout, 1, table, prefix, mask, 1 / MathF.Sqrt(headDim), split);
        double reorder = 2.0 * (prefix + n + headDim) * U * 4 + 1e-6;
        for (int i = 0; i < expected.Length; i++)
            Assert.That(actual[i], Is.EqualTo(split[i]).Within(reorder));
    }

    /// <summary>
    /// Batch invariance on the kernel itself: each node of a 40-node tree over a 300-token prefix gets,
    /// bit for bit, what a one-query launch gives the same token once its ancestors are committed
    /// before it (the accepted path compacted into the cache, as speculative decoding leaves it).
    /// </summary>
    [TestCase(false)]
    [TestCase(true)]
    public void A_tree_node_gets_the_attention_of_the_same_token_decoded_after_its_ancestors(bool f16)
    {
        var layout = new KvLayout(Layers: 1, KvHeads: 2, HeadDim: 64, BlockSize: 16);
        int heads = 8, prefix = 300, n = 40, hd = layout.HeadDim;
        var rng = new Random(42);
        var parents = Enumerable.Range(0, n).Select(i => i == 0 ? -1 : rng.Next(-1, i)).ToArray();
        var (cache, table, blocks) = RandomCache(rng, layout, 0, prefix + n, out var k, out var v);
        var q = RandomFloats(rng, n * heads * hd);
        var tree = RunTreeAttention(q, n, heads, cache, blocks, layout, 0, table, prefix, AttentionMask.FromParents(parents), f16);
        int kvCols = layout.KvHeads * hd;
        foreach (int node in new[] { 0, 5, 17, 39, n / 2 })
        {
            var path = new List<int>();
            for (int a = node; a >= 0; a = parents[a])
                path.Insert(0, a);
            // The sequence as decoding leaves it: the prefix, then the path's keys and values in order.
            int tokens = prefix + path.Count;
            var pk = new float[tokens * kvCols];
            var pv = new float[tokens * kvCols];
            Array.Copy(k, pk, prefix * kvCols);
            Array.Copy(v, pv, prefix * kvCols);
            for (int i = 0; i < path.Count; i++)
            {
                Array.Copy(k, (prefix + path[i]) * kvCols, pk, (prefix + i) * kvCols, kvCols);
                Array.Copy(v, (prefix + path[i]) * kvCols, pv, (prefix + i) * kvCols, kvCols);
            }
            int seqBlocks = (tokens + layout.BlockSize - 1) / layout.BlockSize;
            var seqTable = Enumerable.Range(0, seqBlocks).Reverse().ToArray();
            var seqCache = new float[seqBlocks * KvCacheKernels.BlockFloats(layout)];
            KvCacheKernels.StoreKvF32(pk, pv, tokens, seqTable, 0, seqCache, layout, 0);
            var alone = RunTreeAttention(q.AsSpan(node * heads * hd, heads * hd).ToArray(), 1, heads, seqCache, seqBlocks, layout, 0, seqTable,
                tokens - 1, AttentionMask.Causal, f16);
            Assert.That(alone, Is.EqualTo(tree.AsSpan(node * heads * hd, heads * hd).ToArray()), $"node {node} (depth {path.Count})");
        }
    }
}

public abstract partial class GpuSuite
{
    /// <summary>Rows of logits with what sampling must survive: ties at the top-k border, NaN, −∞, a single finite logit.</summary>
    private static float[] SamplingRows(Random rng, int rows, int vocab)
    {
        var x = new float[rows * vocab];
        for (int r = 0; r < rows; r++)
        {
            var row = x.AsSpan(r * vocab, vocab);
            for (int i = 0; i < vocab; i++)
                row[i] = (float)(rng.NextDouble() * 12 - 6);
            switch (r % 5)
            {
                case 1: // ties: a run of equal logits at the top
                    for (int i = 0; i < 6; i++)
                        row[rng.Next(vocab)] = 7;
                    break;
                case 2: // NaN and −∞ scattered
                    for (int i = 0; i < vocab / 10; i++)
                        row[rng.Next(vocab)] = i % 2 == 0 ? float.NaN : float.NegativeInfinity;
                    break;
                case 3: // one finite logit
                    row.Fill(float.NegativeInfinity);
                    row[rng.Next(vocab)] = 0.5f;
                    break;
            }
        }
        return x;
    }

    public static IEnumerable<TestCaseData> FusedSamplingCases()
    {
        yield return new TestCaseData(37, new FusedSamplingParameters(0.8f, 40, 0.95f, 0)).SetName("sample_f32: vocab 37, top-k 40 (off), top-p 0.95");
        yield return new TestCaseData(3001, new FusedSamplingParameters(1.0f, 0, 1.0f, 0)).SetName("sample_f32: vocab 3001, plain temperature 1");
        yield return new TestCaseData(3001, new FusedSamplingParameters(0.7f, 5, 1.0f, 0)).SetName("sample_f32: vocab 3001, top-k 5");
        yield return new TestCaseData(5000, new FusedSamplingParameters(1.3f, 50, 0.9f, 0.05f)).SetName("sample_f32: vocab 5000, top-k 50, top-p 0.9, min-p 0.05");
        yield return new TestCaseData(2048, new FusedSamplingParameters(0.5f, 0, 0.5f, 0)).SetName("sample_f32: vocab 2048, top-p 0.5");
        yield return new TestCaseData(3001, new FusedSamplingParameters(0.9f, 2000, 0.7f, 0)).SetName("sample_f32: vocab 3001, top-k 2000 (too many to gather), top-p 0.7");
    }

    /// <summary>
    /// sample_f32 against its CPU reference: the same token, probability, query probability and
    /// distribution. The reference does the kernel's float operations in its order, so on the emulator
    /// they are identical; a GPU's expf may round a weight differently by an ulp, which can move a
    /// threshold or a draw that lands within an ulp of a border — then the test allows a different
    /// token only if the reference's draw was that close to it.
    /// </summary>
    [TestCaseSource(nameof(FusedSamplingCases))]
    public void Fused_sampling_matches_its_cpu_reference(int vocab, FusedSamplingParameters p)
    {
        const int rows = 10;
        var rng = new Random(vocab + p.TopK);
        var x = SamplingRows(rng, rows, vocab);
        var queries = Enumerable.Range(0, rows).Select(r => r == 4 ? -1 : rng.Next(vocab)).ToArray();
        ulong seed = 0x1234_5678_9ABCUL, offset = 77;
        using var dx = Device.Upload<float>(x);
        using var dquery = Device.Upload<int>(queries);
        using var dtoken = Device.Allocate<int>(rows);
        using var dprob = Device.Allocate<float>(rows);
        using var dqprob = Device.Allocate<float>(rows);
        using var dprobs = Device.Allocate<float>((long)rows * vocab);
        using var dstats = Device.Allocate<float>(3 * rows);
        Cuda.Kernels.Sampling.SampleF32(Device, dx, rows, vocab, p, seed, offset, dquery, dtoken, dprob, dqprob, dprobs, dstats);
        var stats = Device.Download<float>(dstats);
        var tokens = Device.Download<int>(dtoken);
        var probList = Device.Download<float>(dprob);
        var qprobs = Device.Download<float>(dqprob);
        var dists = Device.Download<float>(dprobs);
        var expectedProbs = new float[vocab];
        for (int r = 0; r < rows; r++)
        {
            var row = x.AsSpan(r * vocab, vocab);
            int expected = FusedSampling.SampleF32(row, p, seed, offset, r, queries[r], out float prob, out float queryProb, out var rowStats, expectedProbs);
            // The stats describe the distribution exactly: what acceptance recomputes p from.
            for (int i = 0; i < vocab; i++)
                Assert.That(FusedSampling.Probability(row[i], rowStats, 1 / p.Temperature), Is.EqualTo(expectedProbs[i]), $"row {r}, token {i}");
            if (Device.IsEmulator)
            {
                Assert.That(tokens[r], Is.EqualTo(expected), $"row {r}");
                Assert.That(probList[r], Is.EqualTo(prob), $"row {r}");
                Assert.That(qprobs[r], Is.EqualTo(queryProb), $"row {r}");
                Assert.That(dists.AsSpan(r * vocab, vocab).ToArray(), Is.EqualTo(expectedProbs), $"row {r}");
                Assert.That(stats.AsSpan(3 * r, 3).ToArray(), Is.EqualTo(new[] { rowStats.Max, rowStats.Threshold, rowStats.Mass }), $"row {r}: stats");
            }
            else
            {
                Assert.That(tokens[r] == expected || Math.Abs(expectedProbs[Math.Max(tokens[r], 0)] - expectedProbs[expected]) < 1e-3, $"row {r}");
                for (int i = 0; i < vocab; i++)
                    Assert.That(dists[r * vocab + i], Is.EqualTo(expectedProbs[i]).Within(1e-5), $"row {r}, token {i}");
            }
            Assert.That(expected, Is.GreaterThanOrEqualTo(0), $"row {r}: a row with a finite logit draws a token");
            Assert.That(expectedProbs[expected], Is.GreaterThan(0), $"row {r}: the drawn token was kept");
        }
    }

    /// <summary>
    /// The fused kernel's draws follow the chain's distribution: rows of the same logits (each row its
    /// own Philox counter, so independent draws) against <see cref="SamplerChain.Distribution"/> in a
    /// chi-square test at the 0.1% level (tokens expecting under 5 draws pooled): 4000 draws on a GPU,
    /// 500 on the emulator, which runs a row's 1024 threads as fibers (about 0.1 s a row).
    /// </summary>
    [TestCase(0.8f, 0, 1.0f, 0.0f)]
    [TestCase(1.0f, 8, 0.9f, 0.0f)]
    [TestCase(1.2f, 0, 0.8f, 0.1f)]
    public void Fused_sampling_draws_follow_the_sampler_chains_distribution(float temperature, int topK, float topP, float minP)
    {
        const int vocab = 40;
        int rows = Device.IsEmulator ? 500 : 4000;
        var rng = new Random(5);
        var logits = Enumerable.Range(0, vocab).Select(_ => (float)(rng.NextDouble() * 4)).ToArray();
        var x = new float[rows * vocab];
        for (int r = 0; r < rows; r++)
            logits.CopyTo(x, r * vocab);
        var options = new SamplingOptions { Temperature = temperature, TopK = topK, TopP = topP, MinP = minP };
        using var dx = Device.Upload<float>(x);
        using var dtoken = Device.Allocate<int>(rows);
        using var dprob = Device.Allocate<float>(rows);
        Cuda.Kernels.Sampling.SampleF32(Device, dx, rows, vocab, FusedSamplingParameters.From(options), 99, 0, default, dtoken, dprob, default, default);
        var counts = new int[vocab];
        foreach (int t in Device.Download<int>(dtoken))
            counts[t]++;
        var expected = new float[vocab];
        SamplerChain.Create(options).Distribution(logits, expected);
        AssertChiSquare(counts, expected.Select(e => (double)e).ToArray(), rows, $"T {temperature}, top-k {topK}, top-p {topP}, min-p {minP}");
    }

    /// <summary>
    /// Pearson's chi-square of counts against probabilities at the 0.1% level: tokens of probability 0
    /// must never be drawn; tokens expecting fewer than 5 draws are pooled into one cell (the test's
    /// usual validity condition). The 99.9th percentile is the Wilson–Hilferty approximation
    /// df·(1 − 2/(9df) + 3.0902·√(2/(9df)))³, within 1% of the exact value for df ≥ 3.
    /// </summary>
    internal static void AssertChiSquare(int[] counts, double[] probs, int draws, string what)
    {
        double chi2 = 0, pooledExpected = 0;
        int pooledCount = 0, cells = 0;
        for (int i = 0; i < probs.Length; i++)
        {
            if (probs[i] == 0)
            {
                Assert.That(counts[i], Is.Zero, $"{what}: token {i} has probability 0 but was drawn");
                continue;
            }
            double expected = probs[i] * draws;
            if (expected < 5)
            {
                pooledExpected += expected;
                pooledCount += counts[i];
                continue;
            }
            chi2 += (counts[i] - expected) * (counts[i] - expected) / expected;
            cells++;
        }
        if (pooledExpected > 0)
        {
            chi2 += (pooledCount - pooledExpected) * (pooledCount - pooledExpected) / pooledExpected;
            cells++;
        }
        int df = cells - 1;
        Assert.That(df, Is.GreaterThanOrEqualTo(3), $"{what}: too few cells for the test");
        double h = 2.0 / (9 * df);
        double critical = df * Math.Pow(1 - h + 3.0902 * Math.Sqrt(h), 3);
        Assert.That(chi2, Is.LessThan(critical), $"{what}: chi-square {chi2:F2} with {df} degrees of freedom (critical {critical:F1})");
    }

    [Test]
    public void Top_k_ids_match_the_cpu_reference()
    {
        const int rows = 6, vocab = 3000, k = 8;
        var x = SamplingRows(new Random(3), rows, vocab);
        using var dx = Device.Upload<float>(x);
        using var dids = Device.Allocate<int>(rows * k);
        Cuda.Kernels.Sampling.TopKIdsF32(Device, dx, rows, vocab, k, dids);
        var ids = Device.Download<int>(dids);
        var expected = new int[k];
        for (int r = 0; r < rows; r++)
        {
            FusedSampling.TopKIdsF32(x.AsSpan(r * vocab, vocab), expected);
            Assert.That(ids.AsSpan(r * k, k).ToArray(), Is.EqualTo(expected), $"row {r}");
        }
    }

    [Test]
    public void A_row_without_a_finite_logit_draws_minus_one()
    {
        var x = new float[64];
        x.AsSpan().Fill(float.NegativeInfinity);
        x[3] = float.NaN;
        using var dx = Device.Upload<float>(x);
        using var dtoken = Device.Allocate<int>(1);
        using var dprob = Device.Allocate<float>(1);
        Cuda.Kernels.Sampling.SampleF32(Device, dx, 1, 64, new FusedSamplingParameters(1, 0, 1, 0), 1, 0, default, dtoken, dprob, default, default);
        Assert.That(Device.Download<int>(dtoken)[0], Is.EqualTo(-1));
        Assert.That(FusedSampling.SampleF32(x, new FusedSamplingParameters(1, 0, 1, 0), 1, 0, 0, -1, out _, out _), Is.EqualTo(-1));
    }
}

public abstract partial class GpuSuite
{
    /// <summary>A random tree of <paramref name="n"/> nodes: parents before children, tokens from a small vocabulary (siblings may repeat).</summary>
    private static (int[] Parent, int[] Token) RandomTree(Random rng, int n, int vocab)
    {
        var parent = Enumerable.Range(0, n).Select(i => i == 0 ? -1 : rng.Next(-1, i)).ToArray();
        var token = Enumerable.Range(0, n).Select(_ => rng.Next(vocab)).ToArray();
        return (parent, token);
    }

    [Test]
    public void Greedy_acceptance_matches_its_cpu_reference()
    {
        var rng = new Random(11);
        var path = new List<int>();
        for (int trial = 0; trial < 20; trial++)
        {
            int n = rng.Next(0, 40), vocab = 4; // a small vocabulary: argmax matches happen often
            var (parent, token) = RandomTree(rng, n, vocab);
            var argmax = Enumerable.Range(0, n + 1).Select(_ => rng.Next(vocab)).ToArray();
            int expected = Speculative.AcceptanceKernels.AcceptGreedy(parent, token, argmax, path);
            var expectedPath = path.ToArray();
            using var dp = Device.Upload<int>(n == 0 ? [0] : parent);
            using var dt = Device.Upload<int>(n == 0 ? [0] : token);
            using var da = Device.Upload<int>(argmax);
            using var dout = Device.Allocate<int>(Cuda.Kernels.Acceptance.OutputInts(n));
            Cuda.Kernels.Acceptance.AcceptGreedy(Device, dp, dt, n, da, dout);
            var output = Device.Download<int>(dout);
            Assert.That(output[1], Is.EqualTo(expected), $"trial {trial}: next token");
            Assert.That(output.AsSpan(2, output[0]).ToArray(), Is.EqualTo(expectedPath), $"trial {trial}: path");
        }
    }

    /// <summary>
    /// accept_sampled against its CPU reference on random trees with deterministic, independent and
    /// without-replacement children: the same path and next token. On the emulator every float operation
    /// is the reference's; on a GPU expf may round a weight an ulp apart, which changes a decision only
    /// if a uniform draw lands within that ulp of p/q (about 1e-7 a test) — so the test asks for equality.
    /// </summary>
    [TestCase(0)]
    [TestCase(1)]
    [TestCase(2)]
    public void Sampled_acceptance_matches_its_cpu_reference(int kind)
    {
        const int vocab = 50;
        var rng = new Random(100 + kind);
        var path = new List<int>();
        int rejections = 0;
        for (int trial = 0; trial < 8; trial++)
        {
            int n = rng.Next(1, 12);
            var (parent, _) = RandomTree(rng, n, vocab);
            // Rows' target logits: spread, so that both acceptance and rejection happen; sample_f32 (the
            // reference here, the kernel on the device) gives each row's draw and stats.
            var parameters = new FusedSamplingParameters(1, 0, 1, 0);
            var logits = Enumerable.Range(0, (n + 1) * vocab).Select(_ => (float)(rng.NextDouble() * 6)).ToArray();
            var sampled = new int[n + 1];
            var stats = new FusedSampling.RowStats[n + 1];
            for (int r = 0; r <= n; r++)
                sampled[r] = FusedSampling.SampleF32(logits.AsSpan(r * vocab, vocab), parameters, 7, (ulong)trial, r, -1, out _, out _, out stats[r]);
            // Each node's children: tokens drawn as the kind says from its own q.
            var q = new float[(n + 1) * vocab];
            var qrow = new int[n + 1];
            var draw = new int[n + 1];
            var token = new int[n];
            for (int r = 0; r <= n; r++)
            {
                var qr = Enumerable.Range(0, vocab).Select(_ => (float)Math.Exp(rng.NextDouble() * 6)).ToArray();
                float sum = qr.Sum();
                for (int i = 0; i < vocab; i++)
                    q[r * vocab + i] = qr[i] / sum;
                qrow[r] = kind == 0 ? -1 : r;
                draw[r] = kind;
                var left = q.AsSpan(r * vocab, vocab).ToArray();
                for (int c = 0; c < n; c++)
                {
                    if (parent[c] != r - 1)
                        continue;
                    token[c] = SamplerChain.Draw(kind == 1 ? q.AsSpan(r * vocab, vocab) : left, rng);
                    if (kind != 1)
                        left[token[c]] = 0; // without replacement (and distinct deterministic children)
                }
            }
            ulong seed = 5, offset = (ulong)(trial * 1000);
            int expected = Speculative.AcceptanceKernels.AcceptSampled(logits, stats, 1, sampled, q, qrow, draw, parent, token, vocab, seed, offset, path);
            var expectedPath = path.ToArray();
            int childrenOfLast = parent.Count(p => p == (expectedPath.Length == 0 ? -1 : expectedPath[^1]));
            if (childrenOfLast > 0)
                rejections++;

            using var dlogits = Device.Upload<float>(logits);
            using var dstats = Device.Allocate<float>(3 * (n + 1));
            using var dsampled = Device.Allocate<int>(n + 1);
            using var dprob = Device.Allocate<float>(n + 1);
            Cuda.Kernels.Sampling.SampleF32(Device, dlogits, n + 1, vocab, parameters, 7, (ulong)trial, default, dsampled, dprob, default, default, dstats);
            Assert.That(Device.Download<int>(dsampled), Is.EqualTo(sampled), $"trial {trial}: the rows' draws");
            using var dq = Device.Upload<float>(q);
            using var dqrow = Device.Upload<int>(qrow);
            using var ddraw = Device.Upload<int>(draw);
            using var dparent = Device.Upload<int>(parent);
            using var dtoken = Device.Upload<int>(token);
            using var dresidual = Device.Allocate<float>(vocab);
            using var dout = Device.Allocate<int>(Cuda.Kernels.Acceptance.OutputInts(n));
            Cuda.Kernels.Acceptance.AcceptSampled(Device, dlogits, dstats, 1, dsampled, dq, dqrow, ddraw, dparent, dtoken, n, vocab, seed, offset, dresidual, dout);
            var output = Device.Download<int>(dout);
            Assert.That(output[1], Is.EqualTo(expected), $"trial {trial}: next token");
            Assert.That(output.AsSpan(2, output[0]).ToArray(), Is.EqualTo(expectedPath), $"trial {trial}: path");
        }
        Assert.That(rejections, Is.GreaterThan(0), "some trial rejected every child of a node, so a residual was drawn from");
    }
}

public abstract partial class GpuSuite
{
    private LanguageModel LoadStoriesOnDevice() =>
        LanguageModel.Load(SharedData.StoriesGguf, new ModelOptions { Backend = new CudaBackend(Device, ownsDevice: false, useCuBlas: true) });

    /// <summary>
    /// Sampling on the device: the fused kernel draws each token where the logits are (Philox from the
    /// seed and the token's position), so a seed reproduces a generation and another seed changes it.
    /// </summary>
    [Test]
    public void Sampled_generation_on_the_device_is_reproducible_from_its_seed()
    {
        using var lm = LoadStoriesOnDevice();
        List<int> Run(ulong seed)
        {
            using var session = lm.CreateSession();
            var options = new GenerationOptions { MaxTokens = 24, StopAtEndOfGeneration = false, Sampling = new SamplingOptions { Temperature = 1.0f, Seed = seed, MinP = 0.02f } };
            return session.Generate([1], options).ToList();
        }
        var a = Run(7);
        Assert.That(Run(7), Is.EqualTo(a));
        Assert.That(Run(8), Is.Not.EqualTo(a));
        Assert.That(a.Distinct().Count(), Is.GreaterThan(5), "sampled text, not one repeated token");
    }

    /// <summary>
    /// A session continued with no new prompt on the device: the last token's logits live in the
    /// model's shared scratch (another session may have used it since), so the session runs that
    /// token again — the continuation equals one uninterrupted generation.
    /// </summary>
    [Test]
    public void A_session_continued_without_a_prompt_on_the_device_resumes_exactly()
    {
        using var lm = LoadStoriesOnDevice();
        int[] prompt = [.. lm.Tokenizer.Encode("Once upon a time", addSpecial: true)];
        var greedy = new GenerationOptions { MaxTokens = 12, Sampling = SamplingOptions.Greedy, StopAtEndOfGeneration = false };
        using var whole = lm.CreateSession();
        var expected = whole.Generate(prompt, greedy).ToList();
        using var resumed = lm.CreateSession();
        Assert.That(resumed.Generate(prompt, greedy with { MaxTokens = 0 }).ToList(), Is.Empty);
        using (var other = lm.CreateSession())
            other.Generate([1, 2, 3], greedy with { MaxTokens = 2 }).ToList(); // another session's pass in between
        Assert.That(resumed.Generate([], greedy).ToList(), Is.EqualTo(expected));
    }

    /// <summary>
    /// Sampled speculative decoding with the whole step on the device (fused sampling of every tree row,
    /// accept_sampled; the draft model's chains and its Gumbel-top-k trees): it runs, accepts drafts, and a seed reproduces it (with a
    /// fixed budget: the adaptive one follows measured step times). Its
    /// losslessness is the acceptance kernel's, checked bit for bit against the CPU reference above,
    /// whose output distribution AcceptanceKernelTests checks.
    /// </summary>
    [TestCase("draft")]
    [TestCase("rsd")]
    public void Sampled_speculative_decoding_on_the_device_accepts_drafts_and_is_reproducible(string method)
    {
        using var lm = LoadStoriesOnDevice();
        using var dir = new TempDir();
        LanguageModel? draft = null;
        if (method is "draft" or "rsd")
        {
            string path = dir.File("draft-q8_0.gguf");
            Assert.That(CliTests.Run("quantize", SharedData.StoriesGguf, path, "Q8_0").Code, Is.Zero);
            draft = LanguageModel.Load(path, new ModelOptions { Backend = new CudaBackend(Device, ownsDevice: false) });
        }
        try
        {
            (List<int>, Speculative.SpeculativeStats) Run()
            {
                using var decoder = new Speculative.SpeculativeDecoder(lm, Speculative.DraftSources.Create(method, lm, draft), new() { MaxDraft = 6, Adaptive = false });
                var options = new GenerationOptions { MaxTokens = 40, StopAtEndOfGeneration = false, Sampling = new SamplingOptions { Temperature = 0.7f, Seed = 3 } };
                var tokens = decoder.Generate([1], options).ToList();
                return (tokens, decoder.Stats);
            }
            var (first, stats) = Run();
            var (second, _) = Run();
            Assert.That(first, Has.Count.EqualTo(40));
            Assert.That(second, Is.EqualTo(first), "the same seed, the same tokens");
            Assert.That(stats.AcceptedTokens, Is.GreaterThan(0), "drafts were accepted");
        }
        finally
        {
            draft?.Dispose();
        }
    }

    [Test]
    public void A_draft_model_on_another_device_is_refused_before_decoding()
    {
        using var lm = LoadStoriesOnDevice();
        using var cpuDraft = LanguageModel.Load(SharedData.StoriesGguf, new ModelOptions { Threads = 1 });
        var e = Assert.Throws<ArgumentException>(() => Speculative.DraftSources.Create("draft", lm, cpuDraft))!;
        Assert.That(e.Message, Does.Contain("runs on cpu, the target on cuda:0"));
    }
}

public abstract partial class GpuSuite
{
    /// <summary>store_kv_f16 rounds each value to the nearest binary16 (as .NET's conversion does) and copy_slot_f16 moves a token's K and V.</summary>
    [Test]
    public void An_f16_cache_stores_rounded_values_and_copies_slots()
    {
        var layout = new KvLayout(Layers: 2, KvHeads: 2, HeadDim: 40, BlockSize: 8);
        int n = 11, blocks = 4;
        var rng = new Random(9);
        var k = RandomFloats(rng, n * layout.KvHeads * layout.HeadDim, 3);
        var v = RandomFloats(rng, n * layout.KvHeads * layout.HeadDim, 3);
        int[] table = [2, 0];
        var expected = new float[blocks * KvCacheKernels.BlockFloats(layout)];
        KvCacheKernels.StoreKvF32(k, v, n, table, 0, expected, layout, 1);
        using var cache = Device.Allocate<Half>(expected.Length);
        Device.Clear(cache.Span.Pointer, cache.Span.Bytes);
        using var dk = Device.Upload<float>(k);
        using var dv = Device.Upload<float>(v);
        using var dt = Device.Upload<int>(table);
        Cuda.Kernels.KvCache.StoreKv(Device, dk.Span, dv.Span, n, dt.Span, table.Length, 0, cache.Span, blocks, layout, 1);
        Assert.That(Device.Download<Half>(cache.Span).Select(h => (float)h).ToArray(), Is.EqualTo(RoundToHalf(expected)));
        KvCacheKernels.CopySlotF32(expected, layout, 2, 5, 3, 1);
        Cuda.Kernels.KvCache.CopySlot(Device, cache.Span, blocks, layout, 2, 5, 3, 1);
        Assert.That(Device.Download<Half>(cache.Span).Select(h => (float)h).ToArray(), Is.EqualTo(RoundToHalf(expected)));
    }

    /// <summary>A model on an F16 CUDA cache: as <see cref="CpuF16CacheTests.AssertExactAndClose"/> says.</summary>
    [TestCase("recycle")]
    [TestCase("lookup")]
    public void An_f16_kv_cache_keeps_speculative_decoding_exact_and_logits_close(string method) =>
        CpuF16CacheTests.AssertExactAndClose(new CudaBackend(Device, ownsDevice: false, kvCacheType: Tensors.GgmlType.F16),
            new CudaBackend(Device, ownsDevice: false), method);
}

public abstract partial class GpuSuite
{
    /// <summary>
    /// The decoding strategies on the device: beam search (forked sequences, batched passes), contrastive
    /// search (a tree-masked pass with hidden states), CFG (two sequences per pass) and cautious decoding
    /// (trials as forks) choose on CUDA the tokens they choose on the CPU. Greedy-style choices on stories260K
    /// are far from ties, so the device's different summation order does not move them.
    /// </summary>
    [Test]
    public void Decoding_strategies_on_the_device_choose_what_they_choose_on_the_cpu()
    {
        using var device = LoadStoriesOnDevice();
        using var cpu = LanguageModel.Load(SharedData.StoriesGguf, new ModelOptions { Threads = 2 });
        int[] prompt = [.. cpu.Tokenizer.Encode("Once upon a time, there was a little dog", addSpecial: true)];
        int[] negative = [.. cpu.Tokenizer.Encode("Tom was sad", addSpecial: true)];
        var greedy = new SamplingOptions { Temperature = 0 };
        foreach (var make in new Func<LanguageModel, Engine.Decoding.DecodingStrategy>[]
        {
            lm => new Engine.Decoding.BeamSearch(lm, new Engine.Decoding.BeamSearchOptions { Beams = 4, Groups = 2, DiversityPenalty = 1f }),
            lm => new Engine.Decoding.ContrastiveSearch(lm, 0.6f, 4),
            lm => new Engine.Decoding.GuidedDecoding(lm, Engine.Decoding.Guidance.ClassifierFree, negative, 2f, greedy),
            lm => new Engine.Decoding.CautiousDecoding(lm, new Engine.Decoding.CautiousOptions { EntropyThreshold = 0.5f, Sampling = greedy }),
        })
        {
            var onDevice = make(device);
            var expected = make(cpu).Generate(prompt, 24).ToList();
            Assert.That(onDevice.Generate(prompt, 24).ToList(), Is.EqualTo(expected), onDevice.Name);
            Assert.That(onDevice.LastStats!.Rows, Is.GreaterThan(onDevice.LastStats.Passes), $"{onDevice.Name}: several rows per pass");
        }
    }
}
