using Engine.Api;
using Engine.Formats;

namespace Engine.Tests;

/// <summary>
/// <c>engine convert</c>: an HF folder becomes a GGUF file that loads as the same network (the reference's
/// logits, float32 against double: 2e-5 of the scale) with the same tokenizer; families it cannot write
/// are refused by name.
/// </summary>
public class ConvertTests
{
    public static IEnumerable<TinySpec> Specs()
    {
        // llama: q/k rows permuted from HF's halves to GGUF's pairs
        yield return new TinySpec("convert-llama-gqa", Heads: 4, KvHeads: 2, Seed: 95);
        yield return new TinySpec("convert-granite", Arch: "granite", Heads: 4, KvHeads: 2, Tied: true, Seed: 96, EmbeddingScale: 12f, ResidualScale: 0.22f,
            AttentionScale: 0.0625f, LogitScale: 8f);
        // Mixtral's per-expert HF tensors, and Qwen2-MoE's shared expert
        yield return new TinySpec("convert-mixtral", Heads: 4, KvHeads: 2, Experts: 4, ExpertsUsed: 2, Seed: 97);
        yield return new TinySpec("convert-qwen2moe", Arch: "qwen2moe", Heads: 4, KvHeads: 2, QkvBias: true, Experts: 6, ExpertsUsed: 2, SharedFfn: 64, Seed: 98);
        // BlockFFN's checkpoints: MLA and 3-D blocks into our blockffn layout
        yield return new TinySpec("convert-blockffn-mla", Arch: "blockffn", Heads: 4, KvHeads: 4, HeadDimOverride: 32, QLora: 32, KvLora: 32, RopeDim: 16,
            VDim: 16, Experts: 12, Ffn: 32, Seed: 99, EmbeddingScale: 12f, ResidualScale: 0.22f, LogitScale: 4f, RouterBias: false);
    }

    [TestCaseSource(nameof(Specs))]
    public void A_converted_folder_is_the_same_network_and_tokenizer(TinySpec spec)
    {
        var model = TinyModel.Random(spec);
        using var dir = new TempDir();
        string folder = model.WriteHfFolder(dir.File("hf")), gguf = dir.File("converted.gguf");
        var (code, _, err) = CliTests.Run(["convert", folder, gguf]);
        Assert.That(code, Is.Zero, err);
        using var converted = LanguageModel.Load(gguf, new ModelOptions { Threads = 1 });
        using var original = LanguageModel.Load(folder, new ModelOptions { Threads = 1 });
        var (c, o) = (converted.Config, original.Config);
        Assert.That((c.Architecture, c.Moe, c.BlockFfn, c.Mla, c.HeadDim, c.KvHeads, c.RopeDims, c.FfnDim),
            Is.EqualTo((o.Architecture, o.Moe, o.BlockFfn, o.Mla, o.HeadDim, o.KvHeads, o.RopeDims, o.FfnDim)));
        ModelParityTests.AssertLogitsMatch(converted, model.ReferenceLogits(ModelParityTests.Prompt));
        const string text = "Hello world, the tokenizer round-trips.";
        Assert.That(converted.Tokenizer.Encode(text, addSpecial: true), Is.EqualTo(original.Tokenizer.Encode(text, addSpecial: true)));
    }

    [Test]
    public void Families_without_keys_here_are_refused_by_name()
    {
        using var dir = new TempDir();
        string folder = TinyModel.Random(new TinySpec("convert-gemma2", Arch: "gemma2", Heads: 4, KvHeads: 2, Tied: true, Seed: 100, SlidingWindow: 4))
            .WriteHfFolder(dir.File("hf"));
        var (code, _, err) = CliTests.Run(["convert", folder, dir.File("x.gguf")]);
        Assert.That(code, Is.Not.Zero);
        Assert.That(err, Does.Contain("gemma2").And.Contain("architectures"));
        Assert.That(File.Exists(dir.File("x.gguf")), Is.False);
    }
}
