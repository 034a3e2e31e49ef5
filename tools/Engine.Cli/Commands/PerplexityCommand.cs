using System.CommandLine;
using System.Globalization;
using Engine.Api;
using Engine.Backends;

namespace Engine.Cli.Commands;

/// <summary>
/// <c>engine perplexity</c>, llama-perplexity's method: the text (with BOS) is split into chunks of
/// <c>--ctx</c> tokens, each evaluated from an empty context with its first token replaced by BOS, and
/// only the second half of each chunk is scored (every scored token sees at least ctx/2 of context).
/// </summary>
internal static class PerplexityCommand
{
    public static Command Create(CliOutput io)
    {
        var model = SharedOptions.Model();
        var file = new Option<string>("--file", "-f") { Description = "UTF-8 text to score", Required = true };
        var context = new Option<int>("--ctx", "-c") { Description = "Chunk length in tokens", DefaultValueFactory = _ => 128 };
        var threads = SharedOptions.Threads();
        var device = SharedOptions.Device();
        var chunks = new Option<int>("--chunks") { Description = "Score at most this many chunks (0 = all)" };
        var command = new Command("perplexity", "Perplexity of a text, as llama-perplexity computes it") { model, file, context, threads, device, chunks };
        command.SetAction(parse => CliErrors.Run(io, parse, () =>
        {
            int ctx = parse.GetValue(context);
            if (ctx < 4)
                throw new ArgumentException($"--ctx {ctx} must be at least 4");
            string text = File.ReadAllText(parse.GetRequiredValue(file));
            if (text.EndsWith('\n'))
                text = text[..^1]; // llama.cpp's -f drops one trailing newline; the same tokens give the same chunks

            using var lm = SharedOptions.Load(io, parse.GetRequiredValue(model), SharedOptions.ModelOptions(parse.GetRequiredValue(device), parse.GetValue(threads)) with { ContextLength = ctx, MaxBatch = ctx });
            var result = Perplexity.Compute(lm, text, ctx, parse.GetValue(chunks), progress: (i, ppl) => io.Error.Write(string.Create(CultureInfo.InvariantCulture, $"[{i}]{ppl:F4},")));
            io.Error.WriteLine();
            io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"PPL = {result.Perplexity:F4} +/- {result.Error:F5} ({result.Chunks} chunks of {ctx} tokens, {result.ScoredTokens} tokens scored)"));
            return 0;
        }));
        return command;
    }
}
