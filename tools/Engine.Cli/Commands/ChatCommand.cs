using System.CommandLine;
using System.Text.Json;
using Engine.Api;
using Engine.Chat;
using Engine.Sampling;

namespace Engine.Cli.Commands;

/// <summary>
/// <c>engine chat</c>: an interactive conversation through the model's chat template. Each line read is
/// a user turn; the answer streams as it is generated and the history stays in the KV cache (a turn
/// prefills only what it adds). Ctrl+C stops the current answer and keeps the conversation; commands:
/// <c>/reset</c> (start over), <c>/save FILE</c> (the conversation as JSON), <c>/exit</c>.
/// </summary>
internal static class ChatCommand
{
    public static Command Create(CliOutput io)
    {
        var model = SharedOptions.Model();
        var system = new Option<string?>("--system") { Description = "System prompt" };
        var template = new Option<string?>("--template") { Description = "Which of the model's chat templates to use (e.g. tool_use; default: its default)" };
        var templateFile = new Option<string?>("--template-file") { Description = "A Jinja chat template file to use instead of the model's" };
        var count = new Option<int>("--n-predict", "-n") { Description = "Most tokens per answer", DefaultValueFactory = _ => 512 };
        var temperature = new Option<float>("--temp") { Description = "Temperature (0 = greedy)", DefaultValueFactory = _ => 0.8f };
        var topK = new Option<int>("--top-k") { Description = "Top-k (0 = off)", DefaultValueFactory = _ => 40 };
        var topP = new Option<float>("--top-p") { Description = "Top-p (1 = off)", DefaultValueFactory = _ => 0.95f };
        var minP = new Option<float>("--min-p") { Description = "Min-p (0 = off)", DefaultValueFactory = _ => 0.05f };
        var seed = new Option<ulong?>("--seed") { Description = "Random seed (default: random)" };
        var threads = SharedOptions.Threads();
        var device = SharedOptions.Device();
        var graphs = SharedOptions.CudaGraphs();
        var cacheType = SharedOptions.CacheType();
        var noWarmup = SharedOptions.NoWarmup();
        var context = new Option<int>("--ctx", "-c") { Description = "Context size in tokens (default: the model's, at most 4096)" };

        var command = new Command("chat", "Chat with an instruction-tuned model through its chat template")
        {
            model, system, template, templateFile, count, temperature, topK, topP, minP, seed, threads, device, graphs, cacheType, noWarmup, context,
        };
        var samplers = new SamplerFlags();
        foreach (var option in samplers.All)
            command.Options.Add(option);
        var grammarText = new Option<string?>("--grammar") { Description = "Constrain every reply to a GBNF grammar" };
        var grammarFile = new Option<string?>("--grammar-file") { Description = "File holding the GBNF grammar" };
        var jsonSchema = new Option<string?>("--json-schema") { Description = "Constrain every reply to JSON valid under this schema (JSON text, or @FILE)" };
        var regex = new Option<string?>("--regex") { Description = "Constrain every reply to a regular expression" };
        foreach (var option in new Option[] { grammarText, grammarFile, jsonSchema, regex })
            command.Options.Add(option);
        command.SetAction(parse => CliErrors.Run(io, parse, () =>
        {
            var options = new GenerationOptions
            {
                Grammar = GrammarOption.Load(parse.GetValue(grammarText), parse.GetValue(grammarFile), parse.GetValue(jsonSchema), parse.GetValue(regex)),
                MaxTokens = parse.GetValue(count),
                Sampling = samplers.Apply(parse, new SamplingOptions
                {
                    Temperature = parse.GetValue(temperature),
                    TopK = parse.GetValue(topK),
                    TopP = parse.GetValue(topP),
                    MinP = parse.GetValue(minP),
                    Seed = parse.GetValue(seed) ?? (ulong)Random.Shared.NextInt64(),
                }),
            };
            options.Validate();
            int threadCount = parse.GetValue(threads);
            if (threadCount < 1)
                throw new ArgumentException($"--threads {threadCount} must be at least 1");
            string path = parse.GetRequiredValue(model);
            using var lm = SharedOptions.Load(io, path, SharedOptions.ModelOptions(parse.GetRequiredValue(device), threadCount, parse.GetValue(graphs),
                parse.GetRequiredValue(cacheType)) with { ContextLength = parse.GetValue(context), WarmUp = !parse.GetValue(noWarmup) });
            var chatTemplate = parse.GetValue(templateFile) is { } file
                ? new ChatTemplate(File.ReadAllText(file), lm.Tokenizer.BosId is int b ? lm.Tokenizer.Piece(b) : null,
                    lm.Tokenizer.EosId is int e ? lm.Tokenizer.Piece(e) : null, Path.GetFileName(file))
                : lm.GetChatTemplate(parse.GetValue(template))
                  ?? throw new ArgumentException($"{path} has no chat template: give one with --template-file");
            using var chat = new ChatSession(lm, chatTemplate, parse.GetValue(system));
            io.Error.WriteLine($"chat with {Path.GetFileName(path)} ({chatTemplate.Name} template); /reset, /save FILE, /exit; Ctrl+C stops an answer");

            CancellationTokenSource? answering = null;
            ConsoleCancelEventHandler onCancel = (_, args) =>
            {
                if (answering is { } current)
                {
                    args.Cancel = true; // stop the answer, stay in the chat
                    current.Cancel();
                }
            };
            Console.CancelKeyPress += onCancel;
            try
            {
                while (true)
                {
                    io.Out.Write("> ");
                    io.Out.Flush();
                    string? line = io.In.ReadLine();
                    if (line is null || line.Trim() == "/exit")
                        break;
                    if (line.Trim().Length == 0)
                        continue;
                    if (line.Trim() == "/reset")
                    {
                        chat.Reset();
                        io.Out.WriteLine("(conversation reset)");
                        continue;
                    }
                    if (line.StartsWith("/save ", StringComparison.Ordinal))
                    {
                        string target = line[6..].Trim();
                        File.WriteAllText(target, Engine.Chat.Jinja.PyValue.Json(chat.Messages.ToList(), indent: 2));
                        io.Out.WriteLine($"(saved {chat.Messages.Count} messages to {target})");
                        continue;
                    }
                    using var cts = new CancellationTokenSource();
                    answering = cts;
                    try
                    {
                        foreach (string piece in chat.Ask(line, options, cts.Token))
                        {
                            io.Out.Write(piece);
                            io.Out.Flush();
                        }
                    }
                    catch (OperationCanceledException)
                    {
                        io.Out.Write(" (stopped)");
                    }
                    finally
                    {
                        answering = null;
                    }
                    io.Out.WriteLine();
                    io.Error.WriteLine($"[prefill {chat.LastPrefill} tokens]");
                }
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
