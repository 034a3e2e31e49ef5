using System.Text.Json;
using Engine.Api;
using Engine.Backends;
using Engine.Conversion;
using Engine.Formats.Gguf;
using Engine.Quantization;
using Engine.Tensors;

namespace Engine.Tests;

/// <summary>
/// The benchmark and conversion tools: <c>engine synth</c>, <c>engine quantize</c>,
/// <c>engine perplexity</c>, <c>engine bench --json</c>, and the k-quant quantizers behind them.
/// </summary>
public class ToolsTests
{
    private static (int Code, string Out, string Err) Run(params string[] args) => CliTests.Run(args);

    private static string LlamaSpmVocab => SharedData.Require("vocab/ggml-vocab-llama-spm.gguf");

    /// <summary><c>engine synth</c> of <paramref name="shape"/> with the llama-spm vocabulary into <paramref name="path"/>; synth's stderr when it fails.</summary>
    private static void Synth(string path, params string[] shape)
    {
        var (code, _, err) = Run(["synth", "--like", LlamaSpmVocab, .. shape, path]);
        Assert.That(code, Is.Zero, err);
    }

    /// <summary>A synthesized model decodes: four greedy tokens, end-of-generation ignored.</summary>
    private static void AssertDecodes(LanguageModel lm)
    {
        using var session = lm.CreateSession();
        Assert.That(session.Generate([1], new GenerationOptions { MaxTokens = 4, Sampling = Sampling.SamplingOptions.Greedy, StopAtEndOfGeneration = false }).ToList(),
            Has.Count.EqualTo(4));
    }

    [Test]
    public void Synth_writes_a_seeded_model_of_the_asked_shape_with_the_vocabulary_of_another_file()
    {
        using var dir = new TempDir();
        string a = dir.File("a.gguf"), b = dir.File("b.gguf"), c = dir.File("c.gguf");
        string[] shape = ["--like", LlamaSpmVocab, "--dim", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--ffn", "96", "--type", "Q8_0"];
        Assert.That(Run(["synth", .. shape, "--seed", "5", a]).Code, Is.Zero);
        Assert.That(Run(["synth", .. shape, "--seed", "5", "--threads", "1", b]).Code, Is.Zero);
        Assert.That(Run(["synth", .. shape, "--seed", "6", c]).Code, Is.Zero);
        Assert.That(File.ReadAllBytes(b), Is.EqualTo(File.ReadAllBytes(a)), "same seed, same file, whatever the thread count");
        Assert.That(File.ReadAllBytes(c), Is.Not.EqualTo(File.ReadAllBytes(a)), "the seed matters");

        using var lm = LanguageModel.Load(a, new ModelOptions { Threads = 2 });
        Assert.That((lm.Config.Dim, lm.Config.Layers, lm.Config.Heads, lm.Config.KvHeads, lm.Config.FfnDim, lm.Config.VocabSize),
            Is.EqualTo((64, 2, 4, 2, 96, 32000)));
        using var vocab = GgufFile.Open(LlamaSpmVocab);
        var reference = Engine.Tokenizers.TokenizerLoader.FromGguf(vocab.Metadata);
        const string text = "Hello world, this is a test of the synthesized model.";
        Assert.That(lm.Tokenizer.Encode(text, addSpecial: true), Is.EqualTo(reference.Encode(text, addSpecial: true)));
        using var session = lm.CreateSession();
        var ids = session.Generate([1], new GenerationOptions { MaxTokens = 8, Sampling = Sampling.SamplingOptions.Greedy, StopAtEndOfGeneration = false }).ToList();
        Assert.That(ids, Has.Count.EqualTo(8));
    }

    /// <summary>Qwen3 shapes: q/k norm tensors, heads wider than dim / heads (0.6B's are 16 × 128 over 1024).</summary>
    [Test]
    public void Synth_writes_qwen3_with_head_norms_and_wide_heads()
    {
        using var dir = new TempDir();
        string path = dir.File("q3.gguf");
        Synth(path, "--arch", "qwen3", "--dim", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--head-dim", "32", "--ffn", "96", "--type", "Q8_0");
        using (var gguf = GgufFile.Open(path))
        {
            Assert.That(gguf.Tensors.Select(t => t.Name), Does.Contain("blk.1.attn_q_norm.weight").And.Contain("blk.1.attn_k_norm.weight"));
            Assert.That(gguf.Tensors.Single(t => t.Name == "blk.0.attn_q.weight").Dims, Is.EqualTo(new long[] { 64, 128 }));
        }
        using var lm = LanguageModel.Load(path, new ModelOptions { Threads = 2 });
        Assert.That((lm.Config.Architecture, lm.Config.HeadDim, lm.Config.RopeStyle), Is.EqualTo(("qwen3", 32, Engine.Models.RopeStyle.NeoX)));
        AssertDecodes(lm);
    }

    [Test]
    public void Synth_writes_olmo2_with_post_norms()
    {
        using var dir = new TempDir();
        string path = dir.File("olmo2.gguf");
        Synth(path, "--arch", "olmo2", "--dim", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--ffn", "96");
        using (var gguf = GgufFile.Open(path))
        {
            var names = gguf.Tensors.Select(t => t.Name).ToList();
            Assert.That(names, Does.Contain("blk.1.attn_post_norm.weight").And.Contain("blk.1.ffn_post_norm.weight").And.Not.Contain("blk.1.attn_norm.weight"));
            Assert.That(gguf.Tensors.Single(t => t.Name == "blk.0.attn_k_norm.weight").Dims, Is.EqualTo(new long[] { 32 }), "k normalized whole: kv dim");
        }
        using var lm = LanguageModel.Load(path, new ModelOptions { Threads = 2 });
        AssertDecodes(lm);
    }

    /// <summary>Gemma 2 and 3: norms on both sides of each block, a tied head, the family's windows and caps (Gemma 3: q/k norms, 5 windowed layers of 6).</summary>
    [TestCase("gemma2")]
    [TestCase("gemma3")]
    public void Synth_writes_gemma_with_its_norms_and_windows(string arch)
    {
        using var dir = new TempDir();
        string path = dir.File(arch + ".gguf");
        Synth(path, "--arch", arch, "--dim", "64", "--layers", "6", "--heads", "4", "--kv-heads", "2", "--ffn", "96", "--type", "Q8_0");
        using (var gguf = GgufFile.Open(path))
        {
            var names = gguf.Tensors.Select(t => t.Name).ToList();
            Assert.That(names, Does.Contain("blk.5.attn_norm.weight").And.Contain("blk.5.attn_post_norm.weight").And.Contain("blk.5.ffn_norm.weight")
                .And.Contain("blk.5.ffn_post_norm.weight").And.Not.Contain("output.weight"));
            Assert.That(names.Contains("blk.0.attn_q_norm.weight"), Is.EqualTo(arch == "gemma3"));
        }
        using var lm = LanguageModel.Load(path, new ModelOptions { Threads = 2 });
        var c = lm.Config;
        Assert.That(c.Layout, Is.EqualTo(Engine.Models.BlockLayout.Sandwich));
        Assert.That(Enumerable.Range(0, 6).Count(c.IsSliding), Is.EqualTo(arch == "gemma2" ? 3 : 5));
        Assert.That((c.SlidingWindow, c.AttentionSoftCap, c.FinalLogitSoftCap, lm.Network.TiedOutput),
            Is.EqualTo(arch == "gemma2" ? (4096, 50f, 30f, true) : (512, 0f, 0f, true)));
        AssertDecodes(lm);
    }

    [TestCase("Q8_0")]
    [TestCase("Q4_K_M")]
    public void Synth_writes_phi3_with_fused_tensors(string type)
    {
        using var dir = new TempDir();
        string path = dir.File("phi3.gguf");
        Synth(path, "--arch", "phi3", "--dim", "256", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--ffn", "512", "--type", type);
        using (var gguf = GgufFile.Open(path))
        {
            Assert.That(gguf.Tensors.Single(t => t.Name == "blk.0.attn_qkv.weight").Dims, Is.EqualTo(new long[] { 256, 256 + 2 * 128 }));
            Assert.That(gguf.Tensors.Single(t => t.Name == "blk.0.ffn_up.weight").Dims, Is.EqualTo(new long[] { 256, 1024 }));
            Assert.That(gguf.Tensors.Select(t => t.Name), Does.Not.Contain("blk.0.ffn_gate.weight"));
        }
        using var lm = LanguageModel.Load(path, new ModelOptions { Threads = 2 });
        AssertDecodes(lm);
    }

    [Test]
    public void Synth_writes_granite_with_its_multipliers()
    {
        using var dir = new TempDir();
        string path = dir.File("granite.gguf");
        Synth(path, "--arch", "granite", "--dim", "64", "--layers", "2", "--heads", "4", "--ffn", "96");
        using var lm = LanguageModel.Load(path, new ModelOptions { Threads = 2 });
        Assert.That((lm.Config.Architecture, lm.Config.EmbeddingScale, lm.Config.ResidualScale, lm.Config.AttentionScale, lm.Config.LogitScale),
            Is.EqualTo(("granite", 12f, 0.22f, 0.015625f, 8f)));
    }

    /// <summary>
    /// Mixtures of experts: Mixtral (llama with experts), Qwen2-MoE (a shared expert, four experts wide by
    /// default) and Qwen3-MoE, experts stacked in 3-D tensors, the router kept in F32 whatever the type;
    /// the file loads as the asked MoE, decodes, quantizes (experts and all), and `inspect` describes the
    /// expert layout.
    /// </summary>
    [TestCase("mixtral", "llama")]
    [TestCase("qwen2moe", "qwen2moe")]
    [TestCase("qwen3moe", "qwen3moe")]
    public void Synth_writes_mixtures_of_experts(string arch, string ggufArch)
    {
        using var dir = new TempDir();
        string path = dir.File(arch + ".gguf");
        Synth(path, "--arch", arch, "--dim", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--ffn", "96", "--experts", "4",
            "--experts-used", "2", "--type", "Q8_0");
        using (var gguf = GgufFile.Open(path))
        {
            Assert.That(gguf.Metadata.GetString("general.architecture"), Is.EqualTo(ggufArch));
            var gate = gguf.Tensors.Single(t => t.Name == "blk.1.ffn_gate_exps.weight");
            Assert.That((gate.Dims, gate.Type), Is.EqualTo((new long[] { 64, 96, 4 }, GgmlType.Q8_0)));
            Assert.That(gguf.Tensors.Single(t => t.Name == "blk.1.ffn_down_exps.weight").Dims, Is.EqualTo(new long[] { 96, 64, 4 }));
            Assert.That(gguf.Tensors.Single(t => t.Name == "blk.1.ffn_gate_inp.weight").Type, Is.EqualTo(GgmlType.F32), "the router stays F32");
            Assert.That(gguf.Tensors.Any(t => t.Name == "blk.0.ffn_gate_shexp.weight"), Is.EqualTo(arch == "qwen2moe"));
        }
        using (var lm = LanguageModel.Load(path, new ModelOptions { Threads = 2 }))
        {
            Assert.That(lm.Config.Moe, Is.EqualTo(new Engine.Models.MoeConfig(4, 2, 96, arch == "qwen2moe" ? 384 : 0, arch != "qwen2moe")));
            AssertDecodes(lm);
        }
        var (code, output, err) = Run("inspect", "-m", path);
        Assert.That(code, Is.Zero, err);
        Assert.That(output, Does.Contain("mixture of experts: 4 experts per layer, 2 per token, stacked in ffn_{gate,up,down}_exps (Q8_0)"));
        Assert.That(output.Contains("plus a shared expert"), Is.EqualTo(arch == "qwen2moe"));

        string q4 = dir.File(arch + "-q4_0.gguf");
        Assert.That(Run("quantize", path, q4, "Q4_0").Code, Is.Zero);
        using (var gguf = GgufFile.Open(q4))
        {
            Assert.That(gguf.Tensors.Single(t => t.Name == "blk.0.ffn_up_exps.weight").Type, Is.EqualTo(GgmlType.Q4_0));
            Assert.That(gguf.Tensors.Single(t => t.Name == "blk.0.ffn_gate_inp.weight").Type, Is.EqualTo(GgmlType.F32));
        }
        using (var lm = LanguageModel.Load(q4, new ModelOptions { Threads = 2 }))
            AssertDecodes(lm);
    }

    /// <summary>
    /// BlockFFN: the router biases give the asked sparsity. 64 random tokens through the synthesized model
    /// must meet TLS 0.8 and CLS(8) 0.7 within 0.06 — the biases are set from a normal approximation of
    /// the router's logits (σ = 0.02·√dim, the FFN input at RMS ≈ 1; its norm weights vary ±10%), which
    /// moves the realized shares by a few hundredths; a wrong method (no bias, or biases of the wrong sign
    /// or scale) lands at TLS ≈ 0.5 or near 0/1. `bench` reports the same numbers, and `--dense-ffn` computes
    /// every block for the same logits.
    /// </summary>
    [Test]
    public void Synth_writes_blockffn_with_the_asked_sparsity()
    {
        using var dir = new TempDir();
        string path = dir.File("bffn.gguf");
        Synth(path, "--arch", "blockffn", "--dim", "256", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--experts", "40", "--ffn", "32",
            "--sparsity", "0.8", "--chunk-locality", "0.7", "--type", "Q8_0");
        using (var gguf = GgufFile.Open(path))
        {
            Assert.That(gguf.Tensors.Single(t => t.Name == "blk.1.ffn_up_exps.weight").Dims, Is.EqualTo(new long[] { 256, 32, 40 }));
            Assert.That(gguf.Tensors.Single(t => t.Name == "blk.1.ffn_gate_inp.bias").Dims, Is.EqualTo(new long[] { 40 }));
        }
        using (var lm = LanguageModel.Load(path, new ModelOptions { Threads = 2 }))
        {
            Assert.That(lm.Config.BlockFfn, Is.EqualTo(new Engine.Models.BlockFfnConfig(40, 32)));
            var rng = new Random(3);
            int[] prompt = Enumerable.Range(0, 64).Select(_ => rng.Next(lm.Config.VocabSize)).ToArray();
            using var cache = lm.Network.CreateKvCache(64);
            using var seq = cache.CreateSequence();
            lm.Network.Forward(seq, prompt, Enumerable.Range(0, 64).ToArray(), Engine.Backends.AttentionMask.Causal, [63], new float[lm.Config.VocabSize]);
            var s = lm.Network.BlockSparsity!;
            for (int l = 0; l < 2; l++)
            {
                Assert.That(s.TokenLevel(l), Is.EqualTo(0.8).Within(0.06), s.Describe());
                Assert.That(s.ChunkLevel(l), Is.EqualTo(0.7).Within(0.06), s.Describe());
            }
        }
        var (code, output, err) = Run("bench", "-m", path, "-p", "16", "-n", "4", "-r", "1", "--json");
        Assert.That(code, Is.Zero, err);
        using var row = System.Text.Json.JsonDocument.Parse(output.Trim().Split('\n')[^1]);
        Assert.That(row.RootElement.GetProperty("pp_tls").GetDouble(), Is.EqualTo(0.8).Within(0.1));
        Assert.That(row.RootElement.GetProperty("tg_cls_pass").GetDouble(), Is.EqualTo(row.RootElement.GetProperty("tg_tls").GetDouble()).Within(1e-9),
            "a decoding pass is one token: its chunk is the token");
        Assert.That(row.RootElement.GetProperty("dense_ffn").GetBoolean(), Is.False);
        (code, output, err) = Run("bench", "-m", path, "-p", "16", "-n", "0", "-r", "1", "--dense-ffn");
        Assert.That(code, Is.Zero, err);
        Assert.That(output, Does.Contain("every block computed (--dense-ffn)"));
    }

    [Test]
    public void Synth_refuses_experts_that_do_not_add_up()
    {
        using var dir = new TempDir();
        var (code, _, err) = Run("synth", "--like", LlamaSpmVocab, "--arch", "mixtral", "--dim", "64", "--layers", "2", "--heads", "4", "--ffn", "96",
            "--experts", "4", "--experts-used", "5", dir.File("x.gguf"));
        Assert.That((code, err), Is.Not.EqualTo((0, "")));
        Assert.That(err, Does.Contain("--experts-used"));
        (code, _, err) = Run("synth", "--like", LlamaSpmVocab, "--arch", "llama", "--dim", "64", "--layers", "2", "--heads", "4", "--ffn", "96",
            "--experts", "4", dir.File("y.gguf"));
        Assert.That(err, Does.Contain("--experts is for mixtral"));
        Assert.That(File.Exists(dir.File("x.gguf")) || File.Exists(dir.File("y.gguf")), Is.False);
    }

    [Test]
    public void Synth_rejects_impossible_shapes_with_the_option_named()
    {
        using var dir = new TempDir();
        var (code, _, err) = Run("synth", "--like", LlamaSpmVocab, "--dim", "60", "--layers", "2", "--heads", "8", "--ffn", "96", dir.File("x.gguf"));
        Assert.That(code, Is.Not.Zero);
        Assert.That(err, Does.Contain("--dim 60"));
        Assert.That(File.Exists(dir.File("x.gguf")), Is.False, "nothing is written for a bad shape");
    }

    /// <summary>
    /// Tensor types follow llama.cpp's mixtures, including the fallbacks for rows that do not divide
    /// into 256-value super-blocks (stories260K is 64 wide): Q4_K → Q5_0, Q6_K → Q8_0. Q4_K_M gives
    /// attn_v more bits in the last eighth of the layers (here the last of 5), so it is checked there.
    /// </summary>
    [TestCase("Q8_0", GgmlType.Q8_0, GgmlType.Q8_0)]
    [TestCase("Q4_0", GgmlType.Q4_0, GgmlType.Q4_0)]
    [TestCase("Q4_K_M", GgmlType.Q5_0, GgmlType.Q8_0)]
    [TestCase("Q6_K", GgmlType.Q8_0, GgmlType.Q8_0)]
    public void Quantize_writes_the_llama_cpp_mixture_and_the_model_still_generates(string fileType, GgmlType attnQ, GgmlType attnV)
    {
        using var dir = new TempDir();
        string output = dir.File($"stories-{fileType}.gguf");
        var (code, _, err) = Run("quantize", SharedData.StoriesGguf, output, fileType);
        Assert.That(code, Is.Zero, err);
        using (var file = GgufFile.Open(output))
        {
            var types = file.Tensors.ToDictionary(t => t.Name, t => t.Type);
            Assert.That(types["blk.0.attn_q.weight"], Is.EqualTo(attnQ));
            Assert.That(types["blk.4.attn_v.weight"], Is.EqualTo(attnV));
            Assert.That(types["blk.0.attn_norm.weight"], Is.EqualTo(GgmlType.F32), "norms stay in float");
            Assert.That(file.Metadata.GetInt32("general.file_type"), Is.EqualTo((int)QuantizationPlan.Parse(fileType)));
        }
        using var lm = LanguageModel.Load(output, new ModelOptions { Threads = 2 });
        using var session = lm.CreateSession();
        var ids = session.Generate([1], new GenerationOptions { MaxTokens = 32, Sampling = Sampling.SamplingOptions.Greedy }).ToList();
        Assert.That(ids, Is.Not.Empty);
    }

    /// <summary>Long writes report progress (what the CLI's bar shows on a terminal): from zero, rising, to every tensor byte.</summary>
    [Test]
    public void Quantize_reports_its_progress_tensor_by_tensor()
    {
        using var dir = new TempDir();
        var reports = new List<(long Done, long Total)>();
        var tensors = GgufQuantizer.Quantize(SharedData.StoriesGguf, dir.File("q.gguf"), QuantizationPlan.Parse("Q8_0"), 1, new Recorder(reports));
        long total = tensors.Sum(t => t.Bytes);
        Assert.That(reports[0], Is.EqualTo((0L, total)));
        Assert.That(reports[^1], Is.EqualTo((total, total)));
        Assert.That(reports, Has.Count.EqualTo(tensors.Count + 1), "one report per tensor, and the start");
        Assert.That(reports.Select(r => r.Done), Is.Ordered);
        Assert.That(new FileInfo(dir.File("q.gguf")).Length, Is.GreaterThan(total));
    }

    private sealed class Recorder(List<(long Done, long Total)> reports) : IProgress<(long Done, long Total)>
    {
        public void Report((long Done, long Total) value) => reports.Add(value);
    }

    [Test]
    public void Quantize_never_overwrites_its_input_and_names_a_bad_type()
    {
        using var dir = new TempDir();
        var (code, _, err) = Run("quantize", SharedData.StoriesGguf, dir.File("x.gguf"), "Q3_XYZ");
        Assert.That(code, Is.Not.Zero);
        Assert.That(err, Does.Contain("Q3_XYZ"));
        string copy = dir.File("in.gguf");
        File.Copy(SharedData.StoriesGguf, copy);
        (code, _, err) = Run("quantize", copy, copy, "Q8_0");
        Assert.That(code, Is.Not.Zero, "writing over the input would destroy it mid-read");
        Assert.That(File.ReadAllBytes(copy), Is.EqualTo(File.ReadAllBytes(SharedData.StoriesGguf)));
    }

    /// <summary>
    /// What quantization costs, measured the way users measure it: perplexity on TinyStories-like text
    /// rises a little for Q8_0 and more for Q4_0, never falls far below the float model's.
    /// </summary>
    [Test]
    public void Perplexity_orders_the_quantized_models_by_how_much_they_lost()
    {
        string text = SharedData.StoriesExpected().TextFromBos;
        text = string.Concat(Enumerable.Repeat(text + "\n", 4));
        using var dir = new TempDir();
        double Ppl(string path)
        {
            using var lm = LanguageModel.Load(path, new ModelOptions { Threads = 2 });
            return Perplexity.Compute(lm, text, ctx: 64).Perplexity;
        }
        double f32 = Ppl(SharedData.StoriesGguf);
        Assert.That(Run("quantize", SharedData.StoriesGguf, dir.File("q8.gguf"), "Q8_0").Code, Is.Zero);
        Assert.That(Run("quantize", SharedData.StoriesGguf, dir.File("q4.gguf"), "Q4_0").Code, Is.Zero);
        double q8 = Ppl(dir.File("q8.gguf")), q4 = Ppl(dir.File("q4.gguf"));
        Assert.That(f32, Is.GreaterThan(1).And.LessThan(20), "the model knows this text (it generated it)");
        // Q8_0 keeps 8 bits per weight: its perplexity is within 2% of float's; 4 bits cost more.
        Assert.That(Math.Abs(q8 - f32) / f32, Is.LessThan(0.02), $"Q8_0 {q8} vs F32 {f32}");
        Assert.That(q4, Is.GreaterThan(q8 * 0.99), $"Q4_0 {q4} vs Q8_0 {q8}");
    }

    /// <summary>
    /// llama-perplexity's method, recomputed here from the logits: chunks of ctx tokens (BOS first),
    /// each scored on its second half, perplexity = exp(mean negative log-likelihood).
    /// </summary>
    [Test]
    public void Perplexity_is_exp_of_the_mean_nll_of_each_chunks_second_half()
    {
        using var lm = LanguageModel.Load(SharedData.StoriesGguf, new ModelOptions { Threads = 2 });
        string text = string.Concat(Enumerable.Repeat(SharedData.StoriesExpected().TextFromBos + "\n", 3));
        const int ctx = 32;
        var result = Perplexity.Compute(lm, text, ctx);

        var tokens = lm.Tokenizer.Encode(text, addSpecial: true);
        Assert.That(lm.Tokenizer.AddBos, Is.True);
        int chunks = tokens.Count / ctx, vocab = lm.Config.VocabSize;
        double nll = 0;
        int scored = 0;
        for (int c = 0; c < chunks; c++)
        {
            var chunk = tokens.Skip(c * ctx).Take(ctx).ToArray();
            chunk[0] = lm.Tokenizer.BosId!.Value; // every chunk starts with BOS, as in llama-perplexity
            using var cache = lm.Network.CreateKvCache(ctx);
            using var seq = cache.CreateSequence();
            var logits = new float[ctx * vocab];
            lm.Network.Forward(seq, chunk, Enumerable.Range(0, ctx).ToArray(), AttentionMask.Causal, Enumerable.Range(0, ctx).ToArray(), logits);
            for (int i = ctx / 2; i < ctx - 1; i++)
            {
                var row = logits.AsSpan(i * vocab, vocab);
                double max = double.NegativeInfinity;
                foreach (float v in row)
                    max = Math.Max(max, v);
                double sum = 0;
                foreach (float v in row)
                    sum += Math.Exp(v - max);
                nll -= row[tokens[c * ctx + i + 1]] - max - Math.Log(sum);
                scored++;
            }
        }
        Assert.That(result.Chunks, Is.EqualTo(chunks));
        Assert.That(result.ScoredTokens, Is.EqualTo(scored));
        Assert.That(result.Perplexity, Is.EqualTo(Math.Exp(nll / scored)).Within(1e-4).Percent);
    }

    [Test]
    public void Bench_json_has_llama_bench_fields()
    {
        var (code, output, err) = Run("bench", "-m", SharedData.StoriesGguf, "-p", "16", "-n", "8", "-r", "2", "-t", "2", "--json");
        Assert.That(code, Is.Zero, err);
        var lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.That(lines, Has.Length.EqualTo(1));
        using var json = JsonDocument.Parse(lines[0]);
        var root = json.RootElement;
        Assert.That(root.GetProperty("model").GetString(), Is.EqualTo("stories260K.gguf"));
        Assert.That((root.GetProperty("threads").GetInt32(), root.GetProperty("n_prompt").GetInt32(), root.GetProperty("n_gen").GetInt32()),
            Is.EqualTo((2, 16, 8)));
        foreach (string key in new[] { "pp_tokens_per_s", "tg_tokens_per_s" })
            Assert.That(root.GetProperty(key).GetDouble(), Is.GreaterThan(0), key);
        foreach (string key in new[] { "pp_stddev", "tg_stddev" })
            Assert.That(root.GetProperty(key).GetDouble(), Is.GreaterThanOrEqualTo(0), key);
    }

    /// <summary>
    /// The k-quant quantizers against the error of ideal uniform rounding. With b bits over a block's
    /// range R the step is R/(2^b−1) and the RMS rounding error step/√12. For N(0,1) values: Q4_K and
    /// Q5_K (scale and min per 32 values, R ≈ 4.5σ) give 8.7% and 4.2% of σ, Q6_K (signed scale per 16,
    /// R ≈ 2·2σ) 1.8%. We allow 1.5× that (6-bit sub-block scales and the float16 super-block scale add
    /// a little); a wrong bit layout or scale errs by 30% or more.
    /// </summary>
    [TestCase(GgmlType.Q4_K, 0.13)]
    [TestCase(GgmlType.Q5_K, 0.065)]
    [TestCase(GgmlType.Q6_K, 0.03)]
    public void K_quants_round_trip_within_the_error_of_their_bit_width(GgmlType type, double relativeRms)
    {
        var rng = new Random(3);
        var x = Enumerable.Range(0, 256 * 64).Select(_ => (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()))).ToArray();
        var y = new float[x.Length];
        Dequantize.Row(type, Quantize.Row(type, x), y);
        double err = 0, power = 0;
        for (int i = 0; i < x.Length; i++)
        {
            err += (x[i] - y[i]) * (double)(x[i] - y[i]);
            power += x[i] * (double)x[i];
        }
        Assert.That(Math.Sqrt(err / power), Is.LessThan(relativeRms));
    }

    [Test]
    public void Generate_with_spec_prints_the_plain_greedy_ids()
    {
        var (code, plain, err) = Run("generate", "-m", SharedData.StoriesGguf, "--prompt-ids", "1", "-n", "120", "--temp", "0", "--ids");
        Assert.That(code, Is.Zero, err);
        foreach (string method in new[] { "recycle", "lookup", "layerskip", "online" })
        {
            var (c, spec, e) = Run("generate", "-m", SharedData.StoriesGguf, "--prompt-ids", "1", "-n", "120", "--temp", "0", "--ids", "--spec", method);
            Assert.That(c, Is.Zero, e);
            Assert.That(spec, Is.EqualTo(plain), method);
            Assert.That(e, Does.Match(@"speculative \(" + method + @"\): 120 tokens .* tau [\d.]+"));
        }
        var (bad, _, message) = Run("generate", "-m", SharedData.StoriesGguf, "--prompt-ids", "1", "--spec", "draft");
        Assert.That(bad, Is.Not.Zero);
        Assert.That(message, Does.Contain("--draft-model"));
    }

    [Test]
    public void Spec_bench_json_has_the_keys_the_issue_names_and_greedy_outputs_are_identical()
    {
        using var dir = new TempDir();
        string prompts = dir.File("prompts.txt");
        File.WriteAllLines(prompts, ["Once upon a time", "The little dog"]);
        var (code, output, err) = Run("spec-bench", "-m", SharedData.StoriesGguf, "--method", "recycle", "--prompts", prompts, "-n", "48", "-t", "1", "--json");
        Assert.That(code, Is.Zero, err);
        var lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.That(lines, Has.Length.EqualTo(1));
        using var json = JsonDocument.Parse(lines[0]);
        var root = json.RootElement;
        Assert.That(root.GetProperty("method").GetString(), Is.EqualTo("recycle"));
        foreach (string key in new[] { "tau", "acceptance_rate", "plain_tokens_per_s", "spec_tokens_per_s", "speedup" })
            Assert.That(root.GetProperty(key).GetDouble(), Is.GreaterThan(0).Or.EqualTo(0), key);
        Assert.That(root.GetProperty("tau").GetDouble(), Is.GreaterThanOrEqualTo(1));
        Assert.That(root.GetProperty("identical").GetBoolean(), Is.True);
    }
}

/// <summary>
/// The device scripts run only on a lent GPU machine, where a syntax error would waste the loan: here
/// bash and Python parse them, and the test binary is checked to carry what run.sh starts.
/// </summary>
public class DeviceScriptTests
{
    private static (int Code, string Output) Exec(string file, string args)
    {
        var start = new System.Diagnostics.ProcessStartInfo(file, args) { RedirectStandardError = true, RedirectStandardOutput = true };
        try
        {
            using var p = System.Diagnostics.Process.Start(start)!;
            string output = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
            p.WaitForExit();
            return (p.ExitCode, output);
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return (-1, $"{file} is not installed");
        }
    }

    [TestCase("tools/device/run.sh")]
    [TestCase("tools/device/pack.sh")]
    [TestCase("tools/bench/compare-llamacpp.sh")]
    public void Shell_scripts_parse(string script)
    {
        var (code, output) = Exec("bash", $"-n {Path.Combine(SharedData.RepositoryRoot, script)}");
        if (code == -1)
            Assert.Ignore(output);
        Assert.That(code, Is.Zero, output);
    }

    [TestCase("tools/device/torch_gemv.py")]
    [TestCase("tools/device/torch_spec.py")]
    public void The_pytorch_references_parse(string file)
    {
        var (code, output) = Exec("python3", $"-c \"import ast,sys; ast.parse(open(sys.argv[1]).read())\" {Path.Combine(SharedData.RepositoryRoot, file)}");
        if (code == -1)
            Assert.Ignore(output);
        Assert.That(code, Is.Zero, output);
    }

    [Test]
    public void Run_sh_uses_commands_the_cli_has()
    {
        string script = File.ReadAllText(Path.Combine(SharedData.RepositoryRoot, "tools/device/run.sh"));
        foreach (string command in new[] { "kernels-bench", "synth", "quantize", "bench", "spec-bench" })
        {
            Assert.That(script, Does.Contain($"\"$bin/engine\" {command}"));
            var (code, _, err) = CliTests.Run(command, "--help");
            Assert.That(code, Is.Zero, $"engine {command} --help: {err}");
        }
        Assert.That(CliTests.Run("bench", "--help").Out, Does.Contain("--cuda-graphs"));
        Assert.That(CliTests.Run("spec-bench", "--help").Out, Does.Contain("--verify-cost").And.Contain("--device"));
        Assert.That(script, Does.Contain("tools/device/torch_spec.py"));
    }
}
