using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Engine.Api;
using Engine.Backends;
using Engine.Backends.Cpu;
using Engine.Backends.Cpu.Kernels;
using Engine.Tensors;

namespace Engine.Tests;

/// <summary>
/// The CPU's F16 KV cache (<c>--cache-type f16</c>): keys and values rounded to binary16 on store and
/// widened exactly on read, so attention over it is bit for bit attention over a float cache holding
/// the rounded values — the same kernels, the same order of operations.
/// </summary>
public unsafe class CpuF16CacheTests
{
    [Test]
    public void Widening_by_multiply_is_exact_for_every_half()
    {
        if (!Vector512.IsHardwareAccelerated || !System.Runtime.Intrinsics.X86.Avx2.IsSupported)
            Assert.Ignore("needs AVX-512 and AVX2");
        var halves = new ushort[65536];
        for (int i = 0; i < halves.Length; i++)
            halves[i] = (ushort)i;
        fixed (ushort* h = halves)
        {
            for (int i = 0; i < halves.Length; i += 16)
            {
                var wide = HalfTable.WidenByMultiply(Vector256.Load(h + i));
                var narrow = HalfTable.WidenByMultiply(Vector128.Load(h + i + 8));
                for (int j = 0; j < 16; j++)
                {
                    float actual = j < 8 ? wide[j] : narrow[j - 8];
                    float wideUpper = wide[j];
                    float expected = (float)BitConverter.UInt16BitsToHalf((ushort)(i + j));
                    string what = $"half 0x{i + j:X4} ({expected})";
                    if (float.IsNaN(expected))
                    {
                        Assert.That(float.IsNaN(actual) && float.IsNaN(wideUpper), what);
                        continue;
                    }
                    Assert.That(BitConverter.SingleToInt32Bits(wideUpper), Is.EqualTo(BitConverter.SingleToInt32Bits(expected)), what + ", 512 bits");
                    Assert.That(BitConverter.SingleToInt32Bits(actual), Is.EqualTo(BitConverter.SingleToInt32Bits(expected)), what + ", 256 bits");
                }
            }
        }
    }

    /// <summary>
    /// Attention over an F16 cache against attention over an F32 cache filled with the same values
    /// rounded to half: bit for bit, through single-sequence attention and a continuous batch of two
    /// sequences. Without rounding on the F32 side the outputs differ (the cache really holds halves).
    /// </summary>
    [TestCaseSource(typeof(CpuKvFixture), nameof(CpuKvFixture.AttentionCases), new object[] { "f16" })]
    public void Attention_over_an_f16_cache_is_attention_over_the_rounded_values(int heads, int kvHeads, int headDim, int blockSize, int prefix, int n, bool tree)
    {
        var problem = new AttentionProblem(heads, kvHeads, headDim, blockSize, prefix, n, tree);
        static float[] Round(float[] x) => x.Select(f => (float)(Half)f).ToArray();
        foreach (bool batch in tree ? [false] : new[] { false, true })
        {
            var expected = problem.Run(GgmlType.F32, Round(problem.K), Round(problem.V), batch);
            var actual = problem.Run(GgmlType.F16, problem.K, problem.V, batch);
            for (int i = 0; i < actual.Length; i++)
            {
                Assert.That(BitConverter.SingleToInt32Bits(actual[i]), Is.EqualTo(BitConverter.SingleToInt32Bits(expected[i])),
                    $"{(batch ? "batch" : "single")}: row {i / (heads * headDim)}, head {i / headDim % heads}, dim {i % headDim}: {actual[i]} vs {expected[i]}");
            }
            Assert.That(problem.Run(GgmlType.F32, problem.K, problem.V, batch), Is.Not.EqualTo(actual), "the F16 cache rounds (the test would not see a cache left in F32)");
        }
    }

    [Test]
    public void A_copied_slot_keeps_its_halves()
    {
        var layout = new KvLayout(Layers: 2, KvHeads: 2, HeadDim: 64, BlockSize: 16);
        using var cpu = new CpuBackend(1, kvCacheType: GgmlType.F16);
        Assert.That(cpu.KvElementBytes, Is.EqualTo(2));
        using var store = CpuKvFixture.StoredAndSlotCopied(cpu, layout, out var k, out var v); // slot 19 to block 3, offset 9
        int cols = 2 * 64;
        var halves = (ushort*)store.Pointers[3];
        for (int h = 0; h < 2; h++)
        {
            for (int d = 0; d < 64; d++)
            {
                float key = k[19 * cols + h * 64 + d], value = v[19 * cols + h * 64 + d];
                Assert.That(halves[Attention.KeyOffset(layout, 1, h) + Attention.KeyIndex(d, 9, 16, layout.HeadDim)], Is.EqualTo(BitConverter.HalfToUInt16Bits((Half)key)), $"key {h}/{d}");
                Assert.That(halves[Attention.ValueOffset(layout, 1, h) + 9 * 64 + d], Is.EqualTo(BitConverter.HalfToUInt16Bits((Half)value)), $"value {h}/{d}");
            }
        }
    }

    /// <summary>
    /// StoreKvBatch splits a batch's rows across the pool and rounds 16 values at a time: every byte of
    /// the cache is what storing each sequence alone on one thread writes, and each half is the scalar
    /// cast's (NaN, infinities, subnormals, values that overflow a half and ties included). Rows of the
    /// three sequences interleave their blocks, so a chunk boundary inside a sequence is exercised too.
    /// </summary>
    [TestCase(GgmlType.F32)]
    [TestCase(GgmlType.F16)]
    [TestCase(GgmlType.Q8_0)]
    public void A_batch_store_split_across_threads_writes_what_each_sequence_stores_alone(GgmlType cacheType)
    {
        var layout = new KvLayout(Layers: 2, KvHeads: 2, HeadDim: 64, BlockSize: 16);
        int cols = 2 * 64;
        int[] rows = [1, 6, 9], prefixes = [30, 0, 13];
        int[][] tables = [[0, 1], [2], [3, 4]];
        var rng = new Random(11);
        float[] special = [float.NaN, float.PositiveInfinity, float.NegativeInfinity, 65520f, -65519f, 6e-8f, 3e-8f, -0f, 1.00048828125f, 1.000732421875f];
        int total = rows.Sum();
        var k = Enumerable.Range(0, total * cols).Select(i => i % 37 == 0 ? special[i / 37 % special.Length] : (float)(rng.NextDouble() * 8 - 4)).ToArray();
        var v = Enumerable.Range(0, total * cols).Select(i => i % 41 == 0 ? special[i / 41 % special.Length] : (float)(rng.NextDouble() * 8 - 4)).ToArray();

        byte[] Stored(int threads, bool batched)
        {
            using var cpu = new CpuBackend(threads, kvCacheType: cacheType);
            using var store = (CpuKvStore)cpu.CreateKvStore(layout, 5);
            for (int b = 0; b < 5; b++)
                store.EnsureBlock(b);
            using var kb = CpuKvFixture.Upload(cpu, k);
            using var vb = CpuKvFixture.Upload(cpu, v);
            if (batched)
            {
                var batch = new SequenceBatch();
                for (int j = 0; j < 3; j++)
                    batch.Add(rows[j], prefixes[j], tables[j]);
                cpu.StoreKvBatch(store, 1, batch, new Activation(kb, total, cols), new Activation(vb, total, cols));
            }
            else
            {
                for (int j = 0, row = 0; j < 3; row += rows[j], j++)
                {
                    using var kj = CpuKvFixture.Upload(cpu, k[(row * cols)..((row + rows[j]) * cols)]);
                    using var vj = CpuKvFixture.Upload(cpu, v[(row * cols)..((row + rows[j]) * cols)]);
                    cpu.StoreKv(store, 1, tables[j], prefixes[j], new Activation(kj, rows[j], cols), new Activation(vj, rows[j], cols));
                }
            }
            long blockBytes = store.BlockByteCount;
            var bytes = new byte[5 * blockBytes];
            for (int b = 0; b < 5; b++)
                new ReadOnlySpan<byte>(store.Pointers[b], (int)blockBytes).CopyTo(bytes.AsSpan((int)(b * blockBytes)));
            return bytes;
        }

        var alone = Stored(1, batched: false);
        Assert.That(Stored(2, batched: true), Is.EqualTo(alone), "batched on two threads");
        Assert.That(alone.Any(b => b != 0), "something was stored");
        if (cacheType == GgmlType.F16)
        {
            // the second sequence's row 0 at slot 0 of block 2: each half is the scalar cast of its value
            var halves = MemoryMarshal.Cast<byte, ushort>(alone.AsSpan((int)(2 * 2L * layout.Layers * layout.LayerBlockFloats * 2)));
            for (int h = 0; h < 2; h++)
            {
                for (int d = 0; d < 64; d++)
                {
                    float key = k[1 * cols + h * 64 + d], value = v[1 * cols + h * 64 + d];
                    Assert.That(halves[(int)(Attention.KeyOffset(layout, 1, h) + Attention.KeyIndex(d, 0, 16, layout.HeadDim))], Is.EqualTo(BitConverter.HalfToUInt16Bits((Half)key)), $"key {h}/{d} = {key}");
                    Assert.That(halves[(int)Attention.ValueOffset(layout, 1, h) + d], Is.EqualTo(BitConverter.HalfToUInt16Bits((Half)value)), $"value {h}/{d} = {value}");
                }
            }
        }
    }

    /// <summary>stories260K on an F16 CPU cache: as <see cref="AssertExactAndClose"/> says.</summary>
    [Test]
    public void A_model_on_an_f16_cpu_cache_decodes_speculatively_exactly_with_close_logits() =>
        AssertExactAndClose(new CpuBackend(2, kvCacheType: GgmlType.F16), new CpuBackend(2), "lookup");

    /// <summary>
    /// stories260K on <paramref name="f16"/> (a backend with an F16 cache): greedy speculative output with
    /// <paramref name="method"/> equals plain greedy output on the same cache (verification and decoding
    /// read the same rounded keys through the same kernel), and the logits stay within 1e-2 of the scale of
    /// <paramref name="exact"/>'s (an F32 cache) — binary16 rounds each key and value by at most 2^-11
    /// relative, which moves stories260K's logits by about 1e-3 of their scale over its 5 layers, while a
    /// wrong element layout or conversion moves them by their whole scale. Shared with the CUDA test.
    /// </summary>
    /// <param name="tolerance">The logits' allowed distance, as a share of their scale (the caller's justification).</param>
    internal static void AssertExactAndClose(Backend f16, Backend exact, string method, float tolerance = 1e-2f)
    {
        using var lm = LanguageModel.Load(SharedData.StoriesGguf, new ModelOptions { Backend = f16 });
        int[] prompt = [.. lm.Tokenizer.Encode("Once upon a time, there was a little dog", addSpecial: true)];
        var plain = SpeculativeTests.Plain(lm, prompt, 40);
        var (spec, stats) = SpeculativeTests.Speculative(lm, Speculative.DraftSources.Create(method, lm), prompt, 40);
        Assert.That(spec, Is.EqualTo(plain));
        Assert.That(stats.AcceptedTokens, Is.GreaterThan(0));

        using var reference = LanguageModel.Load(SharedData.StoriesGguf, new ModelOptions { Backend = exact });
        var expected = SpeculativeTests.PromptLogits(reference, prompt);
        var actual = SpeculativeTests.PromptLogits(lm, prompt);
        float scale = expected.Max(MathF.Abs);
        TestContext.Out.WriteLine($"largest logit difference {expected.Zip(actual).Max(p => Math.Abs(p.First - p.Second)) / scale:E2} of the scale");
        for (int i = 0; i < expected.Length; i++)
            Assert.That(actual[i], Is.EqualTo(expected[i]).Within(tolerance * scale), $"logit {i}");
        Assert.That(actual, Is.Not.EqualTo(expected), "the cache rounds (the test would not see a cache left in F32)");
    }

    [Test]
    public void Cache_types_the_cpu_does_not_hold_are_a_clear_error()
    {
        var e = Assert.Throws<ArgumentException>(() => Engine.Cuda.BackendFactory.Create("cpu", 1, kvCacheType: GgmlType.Q4_0))!;
        Assert.That(e.Message, Does.Contain("--cache-type q4_0"));
        Assert.That(Engine.Cuda.BackendFactory.Create("cpu", 1, kvCacheType: GgmlType.F16).KvElementBytes, Is.EqualTo(2));
    }

    [Test]
    public void Large_blocks_from_huge_page_arenas_are_zeroed_aligned_and_apart()
    {
        // 4 layers x 8 kv heads x 32 slots x 64 x 4 bytes x 2 (K, V) = 512 KiB a block: past KvArena's threshold,
        // and 80 of them (40 MiB) take a second 32 MiB arena
        var layout = new KvLayout(Layers: 4, KvHeads: 8, HeadDim: 64, BlockSize: 32);
        using var cpu = new CpuBackend(1);
        var store = (CpuKvStore)cpu.CreateKvStore(layout, 80);
        const long bytes = 512 << 10;
        for (int b = 0; b < 80; b++)
            store.EnsureBlock(b);
        var starts = new List<long>();
        for (int b = 0; b < 80; b++)
        {
            byte* p = store.Pointers[b];
            Assert.That((long)p % 4096, Is.Zero, $"block {b} is not page-aligned");
            Assert.That(new ReadOnlySpan<byte>(p, (int)bytes).IndexOfAnyExcept((byte)0), Is.EqualTo(-1), $"block {b} is not zeroed");
            new Span<byte>(p, (int)bytes).Fill((byte)(b + 1)); // writable, every byte
            starts.Add((long)p);
        }
        starts.Sort();
        for (int i = 1; i < starts.Count; i++)
            Assert.That(starts[i] - starts[i - 1], Is.GreaterThanOrEqualTo(bytes), "blocks overlap");
        for (int b = 0; b < 80; b++)
            Assert.That(new ReadOnlySpan<byte>(store.Pointers[b], (int)bytes).IndexOfAnyExcept((byte)(b + 1)), Is.EqualTo(-1), $"block {b} was overwritten");
        store.Dispose();
        Assert.That(store.Pointers, Is.Empty);
    }
}
