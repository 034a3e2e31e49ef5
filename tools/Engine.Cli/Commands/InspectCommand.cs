using System.CommandLine;
using Engine.Formats.Gguf;
using Engine.Models;

namespace Engine.Cli.Commands;

/// <summary><c>engine inspect</c>: prints a model's metadata and tensor table.</summary>
internal static class InspectCommand
{
    public static Command Create(CliOutput io)
    {
        var model = SharedOptions.Model();
        var command = new Command("inspect", "Print a model's metadata and tensors") { model };
        command.SetAction(parse => CliErrors.Run(io, parse, () =>
        {
            string path = parse.GetRequiredValue(model);
            var o = io.Out;
            if (Directory.Exists(path))
            {
                o.WriteLine($"HF folder {path}");
                string config = Path.Combine(path, "config.json");
                if (File.Exists(config))
                    o.WriteLine(ModelConfigReader.FromHf(config));
                using var weights = new SafetensorsWeightSource(path);
                o.WriteLine($"{weights.Tensors.Count} tensors (GGUF names, ggml shape order):");
                foreach (var t in weights.Tensors)
                    o.WriteLine($"  {t.Name,-40} {t.Type,-5} {t.ShapeText}");
                return 0;
            }
            using var gguf = GgufFile.Open(path);
            o.WriteLine($"GGUF v{gguf.Version}, {gguf.Metadata.Count} metadata keys, {gguf.Tensors.Count} tensors, alignment {gguf.Alignment}, data at {gguf.DataOffset}");
            foreach (string key in gguf.Metadata.Keys)
                o.WriteLine($"  {key} = {gguf.Metadata[key]}");
            foreach (var t in gguf.Tensors)
                o.WriteLine($"  {t.Name,-40} {t.Type,-5} [{string.Join(", ", t.Dims)}] @{t.Offset}");
            if (ExpertLayout(gguf) is { } layout)
                o.WriteLine(layout);
            return 0;
        }));
        return command;
    }

    /// <summary>
    /// A MoE file's experts in one paragraph: how many, how many per token, how they are stored (stacked
    /// 3-D tensors or one per expert) and in which types, the shared expert, and the weight bytes a token
    /// reads — the routed experts' share scaled by used/experts, everything else whole.
    /// </summary>
    private static string? ExpertLayout(GgufFile gguf)
    {
        string? arch = gguf.Metadata.GetStringOrNull("general.architecture");
        if (arch is null || !gguf.Metadata.Contains($"{arch}.expert_count"))
            return null;
        int experts = gguf.Metadata.GetInt32($"{arch}.expert_count");
        int used = gguf.Metadata.GetInt32($"{arch}.expert_used_count", 0);
        if (experts <= 0)
            return null;
        static bool Routed(string name) => name.Contains("_exps.", StringComparison.Ordinal)
            || System.Text.RegularExpressions.Regex.IsMatch(name, @"\.ffn_(gate|up|down)\.\d+\.weight$");
        var routed = gguf.Tensors.Where(t => Routed(t.Name)).ToList();
        long total = gguf.Tensors.Sum(t => t.ByteSize), expertBytes = routed.Sum(t => t.ByteSize);
        bool stacked = routed.Any(t => t.Name.Contains("_exps.", StringComparison.Ordinal));
        bool shared = gguf.Tensors.Any(t => t.Name.Contains("ffn_gate_shexp", StringComparison.Ordinal));
        string types = string.Join("/", routed.Select(t => t.Type.ToString()).Distinct());
        long perToken = total - expertBytes + (used > 0 ? expertBytes * used / experts : 0);
        return $"mixture of experts: {experts} experts per layer, {used} per token, {(stacked ? "stacked in ffn_{gate,up,down}_exps" : "one tensor per expert")} ({types})"
            + $"{(shared ? ", plus a shared expert (ffn_*_shexp) gated by ffn_gate_inp_shexp" : "")}; routed experts hold {Size(expertBytes)} of {Size(total)} of weights, so a token reads about {Size(perToken)}";
    }

    private static string Size(long bytes) => Engine.Backends.MemoryPlan.Size(bytes);
}
