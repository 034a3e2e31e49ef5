using Engine.Api;
using Engine.Cache;
using Engine.Models;

namespace Engine.Tests;

/// <summary>
/// <see cref="LlamaModel.ForwardBatch"/>: several sequences in one pass — prompt chunks of different
/// lengths beside single decode rows — give each sequence the logits it gets alone. Under
/// batch-invariant arithmetic that holds bit for bit (every row is computed as a one-token pass would
/// compute it, whatever else shares the pass); with the fast kernels it holds up to float32 summation
/// order.
/// </summary>
public class ContinuousBatchTests
{
    public static IEnumerable<TestCaseData> Specs()
    {
        yield return new TestCaseData(new TinySpec("batch-llama-gqa", Heads: 4, KvHeads: 2, Seed: 90)).SetName("batch: Llama with GQA");
        yield return new TestCaseData(new TinySpec("batch-qwen3", Arch: "qwen3", Heads: 4, KvHeads: 2, HeadDimOverride: 24, Seed: 91)).SetName("batch: Qwen3 (q/k norms)");
        yield return new TestCaseData(new TinySpec("batch-gemma2", Arch: "gemma2", Heads: 4, KvHeads: 2, SlidingWindow: 6, AttnSoftCap: 20f, FinalSoftCap: 15f, Seed: 92))
            .SetName("batch: Gemma 2 (windowed layers in a cache of their own)");
        yield return new TestCaseData(new TinySpec("batch-mistral-window", Heads: 4, KvHeads: 4, SlidingWindow: 5, Seed: 93)).SetName("batch: every layer windowed");
    }

    [TestCaseSource(nameof(Specs))]
    public void A_batch_of_sequences_gives_each_the_logits_it_gets_alone(TinySpec spec)
    {
        using var dir = new TempDir();
        using var lm = LanguageModel.Load(TinyModel.Random(spec).WriteGguf(dir.File("m.gguf")), new ModelOptions { Threads = 1 });
        var net = lm.Network;
        int vocab = lm.Config.VocabSize;
        var rng = new Random(spec.Seed);
        int[][] prompts = [Tokens(rng, vocab, 9), Tokens(rng, vocab, 3), Tokens(rng, vocab, 14)];
        int[][] next = [Tokens(rng, vocab, 6), Tokens(rng, vocab, 6), Tokens(rng, vocab, 6)];

        foreach (bool invariant in new[] { true, false })
        {
            // alone: each sequence's prompt, then its tokens one by one
            var alone = new List<float[]>[3];
            for (int j = 0; j < 3; j++)
            {
                using var cache = net.CreateKvCache(64);
                using var seq = cache.CreateSequence();
                alone[j] = [];
                var logits = new float[vocab];
                net.Forward(seq, prompts[j], Enumerable.Range(0, prompts[j].Length).ToArray(), Backends.AttentionMask.Causal, [prompts[j].Length - 1], logits, batchInvariant: invariant);
                alone[j].Add((float[])logits.Clone());
                for (int t = 0; t < next[j].Length; t++)
                {
                    net.Forward(seq, [next[j][t]], [seq.Length], Backends.AttentionMask.Causal, [0], logits, batchInvariant: invariant);
                    alone[j].Add((float[])logits.Clone());
                }
            }

            // together: sequence 2 prefills in two chunks while 0 and 1 have started decoding
            using var shared = net.CreateKvCache(256);
            var seqs = new[] { shared.CreateSequence(), shared.CreateSequence(), shared.CreateSequence() };
            try
            {
                var got = new List<float[]>[] { [], [], [] };
                void Pass(params (int Seq, int[] Tokens, bool Logits)[] parts)
                {
                    var segments = parts.Select(p => new BatchSegment(seqs[p.Seq], p.Tokens.Length, p.Logits)).ToArray();
                    var logits = new float[parts.Count(p => p.Logits) * vocab];
                    net.ForwardBatch(segments, parts.SelectMany(p => p.Tokens).ToArray(), logits, invariant);
                    int o = 0;
                    foreach (var p in parts.Where(p => p.Logits))
                        got[p.Seq].Add(logits.AsSpan(o++ * vocab, vocab).ToArray());
                }
                Pass((0, prompts[0], true), (1, prompts[1], true), (2, prompts[2][..8], false));
                Pass((0, [next[0][0]], true), (2, prompts[2][8..], true), (1, [next[1][0]], true));
                for (int t = 1; t < 6; t++)
                    Pass((2, [next[2][t - 1]], true), (0, [next[0][t]], true), (1, [next[1][t]], true));
                Pass((2, [next[2][5]], true));

                for (int j = 0; j < 3; j++)
                {
                    Assert.That(got[j], Has.Count.EqualTo(alone[j].Count));
                    for (int t = 0; t < got[j].Count; t++)
                    {
                        if (invariant)
                            Assert.That(got[j][t], Is.EqualTo(alone[j][t]), $"sequence {j}, output {t}: batch-invariant rows must equal bit for bit");
                        else
                        {
                            // float32 sums over at most dim = 64 products reordered: a few ulps of the largest logit
                            float scale = alone[j][t].Max(MathF.Abs);
                            for (int i = 0; i < vocab; i++)
                                Assert.That(got[j][t][i], Is.EqualTo(alone[j][t][i]).Within(2e-5f * scale), $"sequence {j}, output {t}, logit {i}");
                        }
                    }
                }
            }
            finally
            {
                foreach (var s in seqs)
                    s.Dispose();
            }
        }
    }

    [Test]
    public void A_bad_batch_is_refused_and_leaves_every_sequence_as_it_was()
    {
        using var dir = new TempDir();
        using var lm = LanguageModel.Load(TinyModel.Random(new TinySpec("batch-bad", Seed: 94)).WriteGguf(dir.File("m.gguf")),
            new ModelOptions { Threads = 1, MaxBatch = 16 });
        var net = lm.Network;
        int vocab = lm.Config.VocabSize;
        using var cache = net.CreateKvCache(40);
        using var a = cache.CreateSequence();
        using var b = cache.CreateSequence();
        var one = new float[vocab];
        Assert.Throws<ArgumentException>(() => net.ForwardBatch([new BatchSegment(a, 10, true), new BatchSegment(b, 10, false)], new int[20], one),
            "more tokens than one pass holds");
        Assert.Throws<ArgumentException>(() => net.ForwardBatch([new BatchSegment(a, 1, true), new BatchSegment(a, 1, false)], new int[2], one),
            "the same sequence twice");
        Assert.Throws<ArgumentException>(() => net.ForwardBatch([new BatchSegment(a, 2, true)], new int[3], one), "token count differs from the segments'");
        Assert.Throws<ArgumentOutOfRangeException>(() => net.ForwardBatch([new BatchSegment(a, 1, true)], [vocab], one), "a token outside the vocabulary");
        // the pool holds two blocks of 32: b's second block and a's first do not both fit, and a failed pass keeps nothing reserved
        net.ForwardBatch([new BatchSegment(b, 16, false)], new int[16], []);
        net.ForwardBatch([new BatchSegment(b, 15, false)], new int[15], []);
        var ex = Assert.Throws<KvCacheFullException>(() => net.ForwardBatch([new BatchSegment(a, 2, true), new BatchSegment(b, 9, false)], new int[11], one));
        Assert.That(ex!.Message, Does.Contain("full"));
        Assert.That((a.Length, b.Length, cache.UsedBlocks), Is.EqualTo((0, 31, 1)));
        net.ForwardBatch([new BatchSegment(a, 2, true), new BatchSegment(b, 1, false)], new int[3], one);
        Assert.That((a.Length, b.Length, cache.UsedBlocks), Is.EqualTo((2, 32, 2)));
    }

    private static int[] Tokens(Random rng, int vocab, int n) => Enumerable.Range(0, n).Select(_ => rng.Next(vocab)).ToArray();
}
