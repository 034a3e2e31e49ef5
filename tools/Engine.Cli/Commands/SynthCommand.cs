using System.CommandLine;
using Engine.Conversion;
using Engine.Formats.Gguf;

namespace Engine.Cli.Commands;

/// <summary><c>engine synth</c>: a random-weight model of any Llama-family shape, with the vocabulary of an existing GGUF.</summary>
internal static class SynthCommand
{
    public static Command Create(CliOutput io)
    {
        var like = new Option<string>("--like") { Description = "GGUF file whose tokenizer the model gets (a vocabulary-only file is fine)", Required = true };
        var arch = new Option<string>("--arch") { Description = "llama, qwen2 (q/k/v biases), qwen3 (q/k norms), granite (embedding, residual, attention and logit multipliers) smollm3 (every fourth layer without RoPE), olmo2 (post-norm blocks, q/k norms), phi3 (fused qkv and gate/up tensors), gemma2 (norms before and after each block, GeGLU, a 4096 window on every other layer, soft caps) or gemma3 (as gemma2 with q/k norms, a 512 window on five layers of six, no caps); mixtures of experts: mixtral (llama with --experts), qwen2moe (q/k/v biases, a shared expert) or qwen3moe (q/k norms); blockffn (BlockFFN: --experts blocks of --ffn units, a ReLU router, MiniCPM's multipliers)", DefaultValueFactory = _ => "llama" };
        var headDim = new Option<int>("--head-dim") { Description = "Head width (default: dim / heads; Qwen3's are wider)" };
        var dim = new Option<int>("--dim") { Description = "Model width", Required = true };
        var layers = new Option<int>("--layers") { Description = "Blocks", Required = true };
        var heads = new Option<int>("--heads") { Description = "Attention heads", Required = true };
        var kvHeads = new Option<int?>("--kv-heads") { Description = "Key/value heads (default: --heads)" };
        var ffn = new Option<int>("--ffn") { Description = "Feed-forward width", Required = true };
        var type = new Option<string>("--type") { Description = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, Q6_K", DefaultValueFactory = _ => "F16" };
        var experts = new Option<int>("--experts") { Description = "Experts per MoE layer (mixtral, qwen2moe, qwen3moe) or blocks per BlockFFN layer (blockffn); --ffn is each one's width" };
        var expertsUsed = new Option<int>("--experts-used") { Description = "Experts each token runs (top-k)" };
        var sparsity = new Option<double>("--sparsity") { Description = "BlockFFN: the share of blocks a token leaves off (TLS)", DefaultValueFactory = _ => 0.8 };
        var locality = new Option<double>("--chunk-locality") { Description = "BlockFFN: the share of blocks no token of an 8-token chunk uses (CLS); at most --sparsity", DefaultValueFactory = _ => 0.7 };
        var sharedFfn = new Option<int>("--shared-ffn") { Description = "Width of Qwen2-MoE's shared expert (default: 4 × --ffn)" };
        var seed = new Option<ulong>("--seed") { Description = "Seed of the weights", DefaultValueFactory = _ => 1 };
        var context = new Option<int>("--ctx") { Description = "Context length written to the metadata", DefaultValueFactory = _ => 2048 };
        var threads = SharedOptions.Threads();
        var output = new Argument<string>("OUT.gguf") { Description = "File to write" };
        var command = new Command("synth", "Write a random-weight model of a given shape (for benchmarks)")
        {
            like, arch, dim, layers, heads, kvHeads, headDim, ffn, experts, expertsUsed, sharedFfn, sparsity, locality, type, seed, context, threads, output,
        };
        command.SetAction(parse => CliErrors.Run(io, parse, () =>
        {
            var spec = new SynthSpec(parse.GetRequiredValue(arch), parse.GetValue(dim), parse.GetValue(layers), parse.GetValue(heads),
                parse.GetValue(kvHeads) ?? parse.GetValue(heads), parse.GetValue(ffn), QuantizationPlan.Parse(parse.GetRequiredValue(type)),
                parse.GetValue(seed), parse.GetValue(context), HeadDimOverride: parse.GetValue(headDim),
                Experts: parse.GetValue(experts), ExpertsUsed: parse.GetValue(expertsUsed), SharedFfn: parse.GetValue(sharedFfn),
                Sparsity: parse.GetValue(sparsity), ChunkLocality: parse.GetValue(locality));
            spec.Validate();
            using var vocab = GgufFile.Open(parse.GetRequiredValue(like));
            string path = parse.GetRequiredValue(output);
            var clock = System.Diagnostics.Stopwatch.StartNew();
            TerminalProgress.Run(io, "synth", progress =>
            {
                ModelSynthesizer.Write(spec, vocab.Metadata, path, parse.GetValue(threads), progress);
                return 0;
            });
            io.Out.WriteLine($"wrote {path}: {spec.Arch} dim {spec.Dim}, {spec.Layers} layers, {spec.Heads}/{spec.KvHeads} heads, ffn {spec.Ffn}{(spec.Moe ? $" × {spec.Experts} experts, {spec.ExpertsUsed} per token" : spec.BlockFfn ? $" × {spec.Experts} blocks, router biased for TLS {spec.Sparsity:0.##} / CLS(8) {spec.ChunkLocality:0.##}" : "")}, {spec.FileType}, {new FileInfo(path).Length / (1 << 20)} MiB in {clock.Elapsed.TotalSeconds:F1} s");
            return 0;
        }));
        return command;
    }
}
