using System.CommandLine;
using Engine.Conversion;

namespace Engine.Cli.Commands;

/// <summary><c>engine convert</c>: an HF model folder as one GGUF file.</summary>
internal static class ConvertCommand
{
    public static Command Create(CliOutput io)
    {
        var input = new Argument<string>("HF_FOLDER") { Description = "Model folder with config.json, safetensors and a tokenizer" };
        var output = new Argument<string>("OUT.gguf") { Description = "File to write" };
        var command = new Command("convert", $"Write an HF model folder as GGUF (its types as they are; then `engine quantize`). Families: {string.Join(", ", HfConverter.Architectures)}")
        {
            input, output,
        };
        command.SetAction(parse => CliErrors.Run(io, parse, () =>
        {
            string from = parse.GetRequiredValue(input), to = parse.GetRequiredValue(output);
            if (!Directory.Exists(from))
                throw new ArgumentException($"{from} is not a folder (convert reads an HF model folder)");
            var clock = System.Diagnostics.Stopwatch.StartNew();
            TerminalProgress.Run(io, "convert", progress =>
            {
                HfConverter.Convert(from, to, progress);
                return 0;
            });
            io.Out.WriteLine($"wrote {to}: {new FileInfo(to).Length / (1 << 20)} MiB in {clock.Elapsed.TotalSeconds:F1} s");
            return 0;
        }));
        return command;
    }
}
