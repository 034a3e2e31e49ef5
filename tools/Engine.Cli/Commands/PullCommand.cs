using System.CommandLine;
using System.Diagnostics;
using Engine.Hub;

namespace Engine.Cli.Commands;

/// <summary>
/// <c>engine pull REPO [FILE]</c>: downloads a model from the Hugging Face hub into its cache (shared with
/// huggingface_hub) and prints the path to load; a progress bar on a terminal, one summary line otherwise.
/// Without FILE it takes the repository's GGUF file (Q4_K_M of several) or its HF folder.
/// </summary>
internal static class PullCommand
{
    public static Command Create(CliOutput io)
    {
        var repo = new Argument<string>("REPO") { Description = "Hub repository, ORG/NAME" };
        var file = new Argument<string?>("FILE") { Description = "File in the repository (default: its GGUF file, or its HF folder)", Arity = ArgumentArity.ZeroOrOne };
        var revision = new Option<string>("--revision") { Description = "Branch, tag or commit", DefaultValueFactory = _ => "main" };
        var cache = new Option<string?>("--cache-dir") { Description = "Hub cache folder (default: HF_HUB_CACHE, HF_HOME/hub or ~/.cache/huggingface/hub)" };
        var endpoint = new Option<string?>("--endpoint") { Description = "Hub address (default: HF_ENDPOINT or https://huggingface.co)" };
        var command = new Command("pull", "Download a model from the Hugging Face hub into its cache and print its path") { repo, file, revision, cache, endpoint };
        command.SetAction(parse => CliErrors.Run(io, parse, () =>
        {
            using var hub = new HubClient(parse.GetValue(cache), parse.GetValue(endpoint));
            var clock = Stopwatch.StartNew();
            long last = 0;
            string path = TerminalProgress.Run(io, bars => HubModel.DownloadAsync(hub, parse.GetRequiredValue(repo), parse.GetValue(file), parse.GetValue(revision)!,
                new Callback(p =>
                {
                    last = p.Bytes;
                    bars?.Invoke(p.File).Report((p.Bytes, p.Total ?? 1));
                })).GetAwaiter().GetResult());
            if (!TerminalProgress.Available(io))
            {
                io.Error.WriteLine(last > 0
                    ? $"downloaded {last / 1048576.0:F1} MiB in {clock.Elapsed.TotalSeconds:F1} s"
                    : "in the cache already");
            }
            io.Out.WriteLine(path);
            return 0;
        }));
        return command;
    }

    /// <summary>Progress reported on the downloading thread itself (no synchronization context to post to).</summary>
    private sealed class Callback(Action<DownloadProgress> report) : IProgress<DownloadProgress>
    {
        public void Report(DownloadProgress value) => report(value);
    }
}
