using System.CommandLine;
using Engine.Conversion;

namespace Engine.Cli.Commands;

/// <summary><c>engine quantize IN.gguf OUT.gguf TYPE</c>, with llama-quantize's mixture rules.</summary>
internal static class QuantizeCommand
{
    public static Command Create(CliOutput io)
    {
        var input = new Argument<string>("IN.gguf") { Description = "Model to quantize" };
        var output = new Argument<string>("OUT.gguf") { Description = "File to write" };
        var type = new Argument<string>("TYPE") { Description = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, Q6_K" };
        var threads = SharedOptions.Threads();
        var command = new Command("quantize", "Write a GGUF model with its weights in another type") { input, output, type, threads };
        command.SetAction(parse => CliErrors.Run(io, parse, () =>
        {
            var fileType = QuantizationPlan.Parse(parse.GetRequiredValue(type));
            string from = parse.GetRequiredValue(input), to = parse.GetRequiredValue(output);
            var clock = System.Diagnostics.Stopwatch.StartNew();
            var tensors = TerminalProgress.Run(io, "quantize", progress => GgufQuantizer.Quantize(from, to, fileType, parse.GetValue(threads), progress));
            foreach (var group in tensors.GroupBy(t => (t.From, t.To)).OrderBy(g => g.Key.From).ThenBy(g => g.Key.To))
                io.Out.WriteLine($"  {group.Count(),4} tensors {group.Key.From} -> {group.Key.To}");
            io.Out.WriteLine($"wrote {to} ({fileType}): {Engine.Formats.LinkedFile.Resolve(from).Length / (1 << 20)} MiB -> {new FileInfo(to).Length / (1 << 20)} MiB in {clock.Elapsed.TotalSeconds:F1} s");
            return 0;
        }));
        return command;
    }
}
