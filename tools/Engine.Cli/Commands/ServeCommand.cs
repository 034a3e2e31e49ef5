using System.CommandLine;
using Engine.Api;
using Engine.Chat;
using Engine.Server;
using Engine.Serving;

namespace Engine.Cli.Commands;

/// <summary>
/// <c>engine serve</c>: the OpenAI-compatible HTTP server (<see cref="OpenAiServer"/>) on one model, with
/// continuous batching of up to <c>--parallel</c> requests and prefix caching. Listens on loopback unless
/// <c>--host</c> says otherwise; runs until Ctrl+C.
/// </summary>
internal static class ServeCommand
{
    public static Command Create(CliOutput io)
    {
        var model = SharedOptions.Model();
        var host = new Option<string>("--host") { Description = "Address to listen on", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "Port (0: any free port)", DefaultValueFactory = _ => 8080 };
        var parallel = new Option<int>("--parallel", "-np") { Description = "Requests decoded together (continuous batching)", DefaultValueFactory = _ => 4 };
        var queue = new Option<int>("--queue") { Description = "Requests that may wait beyond --parallel; more get 429", DefaultValueFactory = _ => 64 };
        var apiKey = new Option<string?>("--api-key") { Description = "Require Authorization: Bearer KEY on /v1" };
        var alias = new Option<string?>("--alias") { Description = "The model's name in the API (default: the file name)" };
        var template = new Option<string?>("--template") { Description = "Which of the model's chat templates to use" };
        var templateFile = new Option<string?>("--template-file") { Description = "A Jinja chat template file to use instead of the model's" };
        var noPrefix = new Option<bool>("--no-prefix-cache") { Description = "Do not keep prompt KV blocks for later requests" };
        var chunk = new Option<int>("--prefill-chunk") { Description = "Most prompt tokens a request prefills per step", DefaultValueFactory = _ => 128 };
        var spec = new Option<string?>("--spec") { Description = "Speculative decoding for greedy requests: lookup (prompt-lookup drafts verified in the batch)" };
        var draftMax = SharedOptions.DraftMax();
        var quiet = new Option<bool>("--quiet") { Description = "No line per request on stderr" };
        var noReserve = new Option<bool>("--no-kv-reserve") { Description = "Make KV blocks as requests first need them instead of reserving the whole pool at start" };
        var kvTokens = new Option<int>("--kv-tokens") { Description = "Tokens the shared KV pool holds for all requests (default: --parallel contexts, on the CPU at most half the memory)" };
        var threads = SharedOptions.Threads();
        var device = SharedOptions.Device();
        var cacheType = SharedOptions.CacheType();
        var noWarmup = SharedOptions.NoWarmup();
        var context = new Option<int>("--ctx", "-c") { Description = "Context per request in tokens (default: the model's, at most 4096)" };

        var command = new Command("serve", "An OpenAI-compatible HTTP server (chat, completions, streaming, tools) with continuous batching")
        {
            model, host, port, parallel, queue, apiKey, alias, template, templateFile, noPrefix, chunk, spec, draftMax, kvTokens, noReserve, quiet, threads, device, cacheType, noWarmup, context,
        };
        command.SetAction(parse => CliErrors.Run(io, parse, () =>
        {
            int threadCount = parse.GetValue(threads);
            if (threadCount < 1)
                throw new ArgumentException($"--threads {threadCount} must be at least 1");
            string path = parse.GetRequiredValue(model);
            string? method = parse.GetValue(spec);
            if (method is not null && method != "lookup")
                throw new ArgumentException($"--spec {method}: the server drafts with lookup only (draft models, trees and the rest are for engine generate)");
            var scheduler = new SchedulerOptions
            {
                Parallel = parse.GetValue(parallel), MaxQueue = parse.GetValue(queue), PrefillChunk = parse.GetValue(chunk),
                PrefixCaching = !parse.GetValue(noPrefix), SpeculativeDraft = method is null ? 0 : parse.GetValue(draftMax),
                KvPoolTokens = parse.GetValue(kvTokens), ReserveKvPool = !parse.GetValue(noReserve),
            };
            scheduler.Validate();
            using var lm = SharedOptions.Load(io, path, SharedOptions.ModelOptions(parse.GetRequiredValue(device), threadCount, false,
                parse.GetRequiredValue(cacheType)) with { ContextLength = parse.GetValue(context), WarmUp = !parse.GetValue(noWarmup) });
            var chatTemplate = parse.GetValue(templateFile) is { } file
                ? new ChatTemplate(File.ReadAllText(file), lm.Tokenizer.BosId is int b ? lm.Tokenizer.Piece(b) : null,
                    lm.Tokenizer.EosId is int e ? lm.Tokenizer.Piece(e) : null, Path.GetFileName(file))
                : lm.GetChatTemplate(parse.GetValue(template));
            using var stop = new CancellationTokenSource();
            ConsoleCancelEventHandler onCancel = (_, args) =>
            {
                args.Cancel = true;
                stop.Cancel();
            };
            Console.CancelKeyPress += onCancel;
            try
            {
                var server = OpenAiServer.StartAsync(lm, chatTemplate, new ServerOptions
                {
                    Host = parse.GetRequiredValue(host), Port = parse.GetValue(port), ApiKey = parse.GetValue(apiKey), ModelName = parse.GetValue(alias),
                    AccessLog = parse.GetValue(quiet) ? null : io.Error,
                    Scheduler = scheduler,
                }).GetAwaiter().GetResult();
                io.Error.WriteLine($"serving {Path.GetFileName(path)} at {server.Address} ({scheduler.Parallel} parallel, context {lm.ContextLength}, "
                    + $"KV pool {server.Scheduler.KvPoolTokens} tokens{(server.Scheduler.KvPoolReserved ? " reserved" : "")}, "
                    + $"{(chatTemplate is null ? "no chat template: /v1/completions only" : chatTemplate.Name + " chat template")}, "
                    + $"prefix cache {(server.Scheduler.PrefixCaching ? "on" : "off")}); Ctrl+C stops");
                try
                {
                    server.WaitForShutdownAsync(stop.Token).GetAwaiter().GetResult();
                }
                catch (OperationCanceledException)
                {
                }
                server.DisposeAsync().AsTask().GetAwaiter().GetResult();
            }
            finally
            {
                Console.CancelKeyPress -= onCancel;
            }
            return 0;
        }));
        return command;
    }
}
