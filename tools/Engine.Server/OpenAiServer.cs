using System.Net;
using System.Text;
using System.Text.Json;
using System.Threading.Channels;
using Engine.Api;
using Engine.Chat;
using Engine.Chat.Jinja;
using Engine.Serving;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Engine.Server;

/// <summary>How <c>engine serve</c> listens and schedules.</summary>
public sealed record ServerOptions
{
    /// <summary>Address to listen on; loopback unless the operator says otherwise.</summary>
    public string Host { get; init; } = "127.0.0.1";

    /// <summary>Port (0: any free one; see <see cref="OpenAiServer.Address"/>).</summary>
    public int Port { get; init; } = 8080;

    /// <summary>When set, every /v1 request must carry <c>Authorization: Bearer KEY</c>.</summary>
    public string? ApiKey { get; init; }

    /// <summary>Where one line per request goes (method, path, status, time, tokens), or null for none.</summary>
    public TextWriter? AccessLog { get; init; }

    /// <summary>The model's name in /v1/models and responses (default: the file name).</summary>
    public string? ModelName { get; init; }

    public SchedulerOptions Scheduler { get; init; } = new();
}

/// <summary>
/// An OpenAI-compatible HTTP server over one model: <c>/v1/chat/completions</c> (chat template, tools,
/// reasoning and tool calls parsed from the output), <c>/v1/completions</c>, <c>/v1/models</c>,
/// <c>/health</c>, <c>/metrics</c> (Prometheus text). Streaming answers are server-sent events in
/// OpenAI's chunk format. Every request becomes one or more <see cref="BatchScheduler"/> completions, so
/// concurrent requests decode in the same batched steps; a client that disconnects cancels its
/// completions and frees their sequences at the next step.
/// </summary>
public sealed class OpenAiServer : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly LanguageModel _model;
    private readonly ChatTemplate? _template;
    private readonly ToolCallFormat _toolFormat;
    private readonly ServerOptions _options;
    private readonly string _name;
    private readonly long _created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();

    private OpenAiServer(WebApplication app, LanguageModel model, ChatTemplate? template, ServerOptions options, BatchScheduler scheduler)
    {
        _app = app;
        _model = model;
        _template = template;
        _toolFormat = template is null ? ToolCallFormat.None : ToolCallParser.Detect(template.Source);
        _options = options;
        Scheduler = scheduler;
        _name = options.ModelName ?? Path.GetFileNameWithoutExtension(model.Path.TrimEnd('/', '\\'));
    }

    public BatchScheduler Scheduler { get; }

    /// <summary>Where the server listens, e.g. http://127.0.0.1:8080.</summary>
    public Uri Address { get; private set; } = null!;

    /// <summary>Starts listening. The server does not own <paramref name="model"/>.</summary>
    /// <param name="template">The chat template (null: /v1/chat/completions answers 400).</param>
    public static async Task<OpenAiServer> StartAsync(LanguageModel model, ChatTemplate? template, ServerOptions options, CancellationToken cancellationToken = default)
    {
        if (!IPAddress.TryParse(options.Host, out var ip))
            throw new ArgumentException($"--host '{options.Host}' is not an IP address");
        if (options.Port < 0 || options.Port > 65535)
            throw new ArgumentOutOfRangeException(nameof(options), $"--port {options.Port} must be 0..65535");
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Listen(ip, options.Port);
            k.Limits.MaxRequestBodySize = RequestReader.MaxBodyBytes;
            k.AddServerHeader = false;
        });
        var app = builder.Build();
        var scheduler = new BatchScheduler(model, options.Scheduler);
        var server = new OpenAiServer(app, model, template, options, scheduler);
        server.Map();
        try
        {
            await app.StartAsync(cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            scheduler.Dispose();
            await app.DisposeAsync().ConfigureAwait(false);
            throw;
        }
        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        server.Address = new Uri(address);
        return server;
    }

    /// <summary>Completes when the server stops (Ctrl+C in <c>engine serve</c>, or <see cref="DisposeAsync"/>).</summary>
    public Task WaitForShutdownAsync(CancellationToken cancellationToken = default) => _app.WaitForShutdownAsync(cancellationToken);

    private void Map()
    {
        _app.Use(async (context, next) =>
        {
            long started = System.Diagnostics.Stopwatch.GetTimestamp();
            try
            {
                await next(context).ConfigureAwait(false);
            }
            finally
            {
                if (_options.AccessLog is { } log)
                {
                    string tokens = context.Items.TryGetValue(UsageKey, out var u) && u is (int prompt, int cached, int completion)
                        ? $" prompt={prompt} cached={cached} completion={completion}" : "";
                    string line = $"{DateTime.UtcNow:HH:mm:ss} {context.Request.Method} {context.Request.Path} {context.Response.StatusCode} "
                        + $"{System.Diagnostics.Stopwatch.GetElapsedTime(started).TotalMilliseconds:F0} ms{tokens}"
                        + (context.RequestAborted.IsCancellationRequested ? " (client left)" : "");
                    lock (log)
                        log.WriteLine(line);
                }
            }
        });
        _app.Use(async (context, next) =>
        {
            try
            {
                if (_options.ApiKey is { } key && context.Request.Path.StartsWithSegments("/v1")
                    && context.Request.Headers.Authorization.ToString() != "Bearer " + key)
                    throw new ApiError(401, "invalid or missing API key (Authorization: Bearer ...)", code: "invalid_api_key");
                await next(context).ConfigureAwait(false);
            }
            catch (ApiError e) when (!context.Response.HasStarted)
            {
                await WriteError(context, e).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
            {
                // the client went away: nothing to answer
            }
            catch (BadHttpRequestException e) when (!context.Response.HasStarted)
            {
                await WriteError(context, new ApiError(e.StatusCode, e.Message)).ConfigureAwait(false);
            }
            catch (Exception e) when (!context.Response.HasStarted)
            {
                // never a stack trace to the client; the operator's console gets it
                Console.Error.WriteLine($"engine serve: {context.Request.Method} {context.Request.Path} failed: {e}");
                await WriteError(context, new ApiError(500, $"internal error: {e.GetType().Name}", "server_error")).ConfigureAwait(false);
            }
        });
        _app.MapGet("/health", () => Results.Json(new { status = "ok" }));
        _app.MapGet("/v1/models", () => Results.Json(new
        {
            @object = "list",
            data = new[] { new { id = _name, @object = "model", created = _created, owned_by = "engine", context_length = _model.ContextLength } },
        }));
        _app.MapGet("/v1/models/{id}", (string id) => id == _name
            ? Results.Json(new { id = _name, @object = "model", created = _created, owned_by = "engine" })
            : throw new ApiError(404, $"the model '{id}' does not exist (this server has '{_name}')", param: "model", code: "model_not_found"));
        _app.MapGet("/metrics", Metrics);
        _app.MapPost("/v1/chat/completions", context => Complete(context, chat: true));
        _app.MapPost("/v1/completions", context => Complete(context, chat: false));
        _app.MapFallback(context => throw new ApiError(404, $"no route {context.Request.Method} {context.Request.Path}", code: "not_found"));
    }

    private const string UsageKey = "engine.usage";

    private static Task WriteError(HttpContext context, ApiError e)
    {
        context.Response.StatusCode = e.Status;
        context.Response.ContentType = "application/json";
        return context.Response.Body.WriteAsync(e.ToJson()).AsTask();
    }

    private async Task Complete(HttpContext context, bool chat)
    {
        var body = await ReadBody(context).ConfigureAwait(false);
        using var doc = RequestReader.Parse(body);
        var p = chat ? RequestReader.Chat(doc.RootElement) : RequestReader.Completion(doc.RootElement);
        if (p.Model is not null && p.Model != _name && p.Model != "default")
            throw new ApiError(404, $"the model '{p.Model}' does not exist (this server has '{_name}')", param: "model", code: "model_not_found");

        List<int> prompt;
        bool thinkingOpened = false;
        if (chat)
        {
            if (_template is null)
                throw ApiError.BadRequest("the model has no chat template: use /v1/completions, or start the server with --template-file");
            string text;
            try
            {
                text = _template.Render(p.Messages, addGenerationPrompt: true, p.Tools);
            }
            catch (JinjaException e)
            {
                throw ApiError.BadRequest($"the chat template refused the conversation: {e.Message}", "messages");
            }
            prompt = _model.Tokenizer.Encode(text, addSpecial: false, parseSpecial: true);
            thinkingOpened = text.TrimEnd().EndsWith("<think>", StringComparison.Ordinal);
        }
        else if (p.PromptTokens is { } ids)
        {
            foreach (int token in ids)
            {
                if (token >= _model.Config.VocabSize)
                    throw ApiError.BadRequest($"token id {token} is outside the vocabulary (0..{_model.Config.VocabSize - 1})", "prompt");
            }
            prompt = [.. ids];
        }
        else
            prompt = _model.Tokenizer.Encode(p.Prompt!, addSpecial: true, parseSpecial: false);
        if (prompt.Count == 0)
            throw ApiError.BadRequest("the prompt is empty", chat ? "messages" : "prompt");
        if (prompt.Count >= _model.ContextLength)
            throw ApiError.BadRequest($"the prompt has {prompt.Count} tokens; the context holds {_model.ContextLength}", chat ? "messages" : "prompt", "context_length_exceeded");
        int room = _model.ContextLength - prompt.Count;
        if (p.MaxTokens > room)
            throw ApiError.BadRequest($"max_tokens {p.MaxTokens} with a prompt of {prompt.Count} tokens exceeds the context of {_model.ContextLength} tokens",
                "max_tokens", "context_length_exceeded");

        var abort = context.RequestAborted;
        var readers = new ChannelReader<CompletionEvent>[p.N];
        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(abort);
        try
        {
            for (int i = 0; i < p.N; i++)
            {
                readers[i] = Scheduler.Submit(new CompletionRequest
                {
                    Prompt = prompt,
                    MaxTokens = p.MaxTokens ?? room,
                    Sampling = p.Sampling with { Seed = p.Sampling.Seed + (ulong)i },
                    Stop = p.Stop,
                    TopLogprobs = p.TopLogprobs,
                    IgnoreEos = p.IgnoreEos,
                    Grammar = p.Grammar,
                }, cancel.Token);
            }
        }
        catch (SchedulerBusyException e)
        {
            cancel.Cancel(); // the ones already queued
            throw new ApiError(429, e.Message, "rate_limit_exceeded", code: "server_busy");
        }
        catch (ArgumentException e)
        {
            cancel.Cancel();
            throw ApiError.BadRequest(e.Message);
        }
        string id = (chat ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N")[..24];
        try
        {
            if (p.Stream)
                await Stream(context, readers, p, chat, id, thinkingOpened, abort).ConfigureAwait(false);
            else
                await Whole(context, readers, p, chat, id, thinkingOpened, abort).ConfigureAwait(false);
        }
        finally
        {
            cancel.Cancel(); // a client gone mid-answer frees its sequences at the scheduler's next step
        }
    }

    private static async Task<ReadOnlyMemory<byte>> ReadBody(HttpContext context)
    {
        var buffer = new MemoryStream();
        await context.Request.Body.CopyToAsync(buffer, context.RequestAborted).ConfigureAwait(false);
        if (buffer.Length > RequestReader.MaxBodyBytes)
            throw new ApiError(413, $"the request body exceeds {RequestReader.MaxBodyBytes} bytes");
        return buffer.GetBuffer().AsMemory(0, (int)buffer.Length);
    }

    /// <summary>The non-streamed answer: every choice whole, tool calls and reasoning parsed out of the text.</summary>
    private async Task Whole(HttpContext context, ChannelReader<CompletionEvent>[] readers, RequestParameters p, bool chat, string id, bool thinkingOpened,
        CancellationToken abort)
    {
        var choices = new List<object>();
        int promptTokens = 0, cached = 0, completion = 0;
        for (int i = 0; i < readers.Length; i++)
        {
            var logprobs = new List<object>();
            EndEvent? end = null;
            await foreach (var e in readers[i].ReadAllAsync(abort).ConfigureAwait(false))
            {
                if (e is TokenEvent t && t.Token >= 0 && p.TopLogprobs >= 0)
                    logprobs.Add(LogprobEntry(t));
                else if (e is EndEvent ee)
                    end = ee;
            }
            if (end is null)
                throw new OperationCanceledException();
            promptTokens = end.PromptTokens;
            cached = end.CachedTokens;
            completion += end.CompletionTokens;
            string finish = Finish(end.Reason);
            if (chat)
            {
                var message = new Dictionary<string, object?> { ["role"] = "assistant" };
                var parser = new ChatStreamParser(p.Tools is null ? ToolCallFormat.None : _toolFormat, thinkingOpened);
                parser.Push(end.Text);
                var reply = parser.Finish().Reply;
                message["content"] = reply.ToolCalls.Count > 0 && reply.Content.Length == 0 ? null : reply.Content;
                if (reply.Reasoning is not null)
                    message["reasoning_content"] = reply.Reasoning;
                if (reply.ToolCalls.Count > 0)
                {
                    message["tool_calls"] = ToolCalls(reply.ToolCalls, id, i, withIndex: false);
                    finish = "tool_calls";
                }
                choices.Add(new Dictionary<string, object?>
                {
                    ["index"] = i, ["message"] = message, ["logprobs"] = p.TopLogprobs >= 0 ? new { content = logprobs } : null, ["finish_reason"] = finish,
                });
            }
            else
            {
                choices.Add(new Dictionary<string, object?>
                {
                    ["index"] = i, ["text"] = p.Echo ? p.Prompt + end.Text : end.Text, ["logprobs"] = p.TopLogprobs >= 0 ? CompletionLogprobs(logprobs) : null,
                    ["finish_reason"] = finish,
                });
            }
        }
        context.Items[UsageKey] = (promptTokens, cached, completion);
        context.Response.ContentType = "application/json";
        await context.Response.Body.WriteAsync(JsonSerializer.SerializeToUtf8Bytes(new Dictionary<string, object?>
        {
            ["id"] = id, ["object"] = chat ? "chat.completion" : "text_completion", ["created"] = DateTimeOffset.UtcNow.ToUnixTimeSeconds(), ["model"] = _name,
            ["choices"] = choices, ["usage"] = Usage(promptTokens, cached, completion),
        }), abort).ConfigureAwait(false);
    }

    /// <summary>
    /// Server-sent events: a first chunk with the role, then deltas as tokens arrive — answer text as
    /// <c>content</c>, thinking as <c>reasoning_content</c>, each released once it cannot turn into
    /// something else (<see cref="ChatStreamParser"/>: a tool call is held and sent whole as
    /// <c>tool_calls</c> at the end) — a last chunk per choice with its finish reason, the usage when
    /// asked for, and <c>[DONE]</c>.
    /// </summary>
    private async Task Stream(HttpContext context, ChannelReader<CompletionEvent>[] readers, RequestParameters p, bool chat, string id, bool thinkingOpened,
        CancellationToken abort)
    {
        var response = context.Response;
        response.ContentType = "text/event-stream";
        response.Headers.CacheControl = "no-cache";
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        var gate = new SemaphoreSlim(1, 1);
        // One event, one write: "data: " + the chunk's JSON + a blank line, framed before taking the gate.
        async Task Send(object chunk)
        {
            byte[] json = JsonSerializer.SerializeToUtf8Bytes(chunk);
            var frame = new byte[json.Length + 8];
            "data: "u8.CopyTo(frame);
            json.CopyTo(frame, 6);
            "\n\n"u8.CopyTo(frame.AsSpan(6 + json.Length));
            await gate.WaitAsync(abort).ConfigureAwait(false);
            try
            {
                await response.Body.WriteAsync(frame, abort).ConfigureAwait(false);
                await response.Body.FlushAsync(abort).ConfigureAwait(false);
            }
            finally
            {
                gate.Release();
            }
        }
        Dictionary<string, object?> Chunk(int index, object delta, string? finish, object? logprobs) => chat
            ? new() { ["id"] = id, ["object"] = "chat.completion.chunk", ["created"] = created, ["model"] = _name,
                ["choices"] = new[] { new Dictionary<string, object?> { ["index"] = index, ["delta"] = delta, ["logprobs"] = logprobs, ["finish_reason"] = finish } } }
            : new() { ["id"] = id, ["object"] = "text_completion", ["created"] = created, ["model"] = _name,
                ["choices"] = new[] { new Dictionary<string, object?> { ["index"] = index, ["text"] = delta, ["logprobs"] = logprobs, ["finish_reason"] = finish } } };
        static Dictionary<string, object?> Delta(string content, string reasoning)
        {
            var delta = new Dictionary<string, object?>();
            if (reasoning.Length > 0)
                delta["reasoning_content"] = reasoning;
            if (content.Length > 0 || reasoning.Length == 0)
                delta["content"] = content;
            return delta;
        }

        var ends = new EndEvent?[readers.Length];
        async Task Run(int i)
        {
            var parser = chat ? new ChatStreamParser(p.Tools is null ? ToolCallFormat.None : _toolFormat, thinkingOpened) : null;
            if (chat)
                await Send(Chunk(i, new Dictionary<string, object?> { ["role"] = "assistant", ["content"] = "" }, null, null)).ConfigureAwait(false);
            await foreach (var e in readers[i].ReadAllAsync(abort).ConfigureAwait(false))
            {
                if (e is TokenEvent t)
                {
                    object? logprobs = p.TopLogprobs >= 0 && t.Token >= 0
                        ? chat ? new { content = new[] { LogprobEntry(t) } } : CompletionLogprobs([LogprobEntry(t)])
                        : null;
                    if (parser is null)
                    {
                        if (t.Text.Length > 0 || logprobs is not null)
                            await Send(Chunk(i, t.Text, null, logprobs)).ConfigureAwait(false);
                        continue;
                    }
                    var (content, reasoning) = parser.Push(t.Text);
                    if (content.Length > 0 || reasoning.Length > 0 || logprobs is not null)
                        await Send(Chunk(i, Delta(content, reasoning), null, logprobs)).ConfigureAwait(false);
                }
                else if (e is EndEvent end)
                {
                    ends[i] = end;
                    string finish = Finish(end.Reason);
                    if (parser is not null)
                    {
                        var (reply, content, reasoning) = parser.Finish();
                        var delta = content.Length > 0 || reasoning.Length > 0 ? Delta(content, reasoning) : null;
                        if (reply.ToolCalls.Count > 0)
                        {
                            (delta ??= [])["tool_calls"] = ToolCalls(reply.ToolCalls, id, i, withIndex: true);
                            finish = "tool_calls";
                        }
                        if (delta is not null)
                            await Send(Chunk(i, delta, null, null)).ConfigureAwait(false);
                    }
                    await Send(Chunk(i, chat ? new Dictionary<string, object?>() : "", finish, null)).ConfigureAwait(false);
                }
            }
        }
        await Task.WhenAll(Enumerable.Range(0, readers.Length).Select(Run)).ConfigureAwait(false);
        if (ends.Any(e => e is null))
            throw new OperationCanceledException();
        context.Items[UsageKey] = (ends[0]!.PromptTokens, ends[0]!.CachedTokens, ends.Sum(e => e!.CompletionTokens));
        if (p.IncludeUsage)
        {
            await Send(new Dictionary<string, object?>
            {
                ["id"] = id, ["object"] = chat ? "chat.completion.chunk" : "text_completion", ["created"] = created, ["model"] = _name,
                ["choices"] = Array.Empty<object>(), ["usage"] = Usage(ends[0]!.PromptTokens, ends[0]!.CachedTokens, ends.Sum(e => e!.CompletionTokens)),
            }).ConfigureAwait(false);
        }
        await response.Body.WriteAsync("data: [DONE]\n\n"u8.ToArray(), abort).ConfigureAwait(false);
        await response.Body.FlushAsync(abort).ConfigureAwait(false);
    }

    private static string Finish(FinishReason reason) => reason switch
    {
        FinishReason.Stop => "stop",
        FinishReason.Length => "length",
        _ => "cancelled",
    };

    private static object Usage(int prompt, int cached, int completion) => new Dictionary<string, object?>
    {
        ["prompt_tokens"] = prompt, ["completion_tokens"] = completion, ["total_tokens"] = prompt + completion,
        ["prompt_tokens_details"] = new { cached_tokens = cached },
    };

    private static List<object> ToolCalls(IReadOnlyList<ToolCall> calls, string id, int choice, bool withIndex) =>
        [.. calls.Select((c, k) =>
        {
            var call = new Dictionary<string, object?>
            {
                ["id"] = c.Id ?? $"call_{id[^12..]}_{choice}_{k}", ["type"] = "function",
                ["function"] = new { name = c.Name, arguments = c.Arguments },
            };
            if (withIndex)
                call["index"] = k;
            return (object)call;
        })];

    private Dictionary<string, object?> LogprobEntry(TokenEvent t)
    {
        Dictionary<string, object?> Entry(int token, float logprob)
        {
            var bytes = _model.Tokenizer.TokenBytes(token);
            return new() { ["token"] = Encoding.UTF8.GetString(bytes), ["logprob"] = logprob, ["bytes"] = bytes.ToArray().Select(b => (int)b).ToArray() };
        }
        var entry = Entry(t.Token, t.Logprob);
        entry["top_logprobs"] = (t.Top ?? []).Select(x => Entry(x.Token, x.Logprob)).ToArray();
        return entry;
    }

    /// <summary>The legacy completions' logprobs layout (parallel lists).</summary>
    private static object CompletionLogprobs(List<object> entries)
    {
        var e = entries.Cast<Dictionary<string, object?>>().ToList();
        return new Dictionary<string, object?>
        {
            ["tokens"] = e.Select(x => x["token"]).ToArray(),
            ["token_logprobs"] = e.Select(x => x["logprob"]).ToArray(),
            // keyed by text: two tokens may read alike (pieces of one character), the likelier is kept
            ["top_logprobs"] = e.Select(x =>
            {
                var top = new Dictionary<string, object?>(StringComparer.Ordinal);
                foreach (var t in (Dictionary<string, object?>[])x["top_logprobs"]!)
                    top.TryAdd((string)t["token"]!, t["logprob"]);
                return top;
            }).ToArray(),
        };
    }

    private Task Metrics(HttpContext context)
    {
        var m = Scheduler.Metrics();
        var text = new StringBuilder();
        void Metric(string name, string type, string help, double value)
        {
            text.Append("# HELP engine_").Append(name).Append(' ').Append(help).Append('\n');
            text.Append("# TYPE engine_").Append(name).Append(' ').Append(type).Append('\n');
            text.Append("engine_").Append(name).Append(' ').Append(value.ToString(System.Globalization.CultureInfo.InvariantCulture)).Append('\n');
        }
        Metric("requests_running", "gauge", "Completions being decoded.", m.Active);
        Metric("requests_waiting", "gauge", "Completions in the queue.", m.Queued);
        Metric("requests_total", "counter", "Completions admitted.", m.Requests);
        Metric("prompt_tokens_total", "counter", "Prompt tokens of admitted completions.", m.PromptTokens);
        Metric("prompt_tokens_cached_total", "counter", "Prompt tokens served from the prefix cache.", m.CachedPromptTokens);
        Metric("generation_tokens_total", "counter", "Tokens generated.", m.GeneratedTokens);
        Metric("steps_total", "counter", "Batched forward passes.", m.Steps);
        Metric("step_seconds_total", "counter", "Seconds in scheduler steps (forward pass, sampling, streaming out).", m.StepSeconds);
        Metric("forward_seconds_total", "counter", "Seconds in the steps' forward passes.", m.ForwardSeconds);
        Metric("requests_cancelled_total", "counter", "Completions whose client went away or cancelled.", m.Cancelled);
        Metric("preemptions_total", "counter", "Requests that stepped back for room in the KV pool (recomputed later).", m.Preemptions);
        Metric("spec_draft_tokens_total", "counter", "Draft tokens proposed for verification (--spec).", m.DraftedTokens);
        Metric("spec_accepted_tokens_total", "counter", "Draft tokens the model accepted (--spec).", m.AcceptedTokens);
        Metric("generation_tokens_per_second", "gauge", "Tokens generated per second, last second.", m.GeneratedTokensPerSecond);
        Metric("kv_cache_usage_ratio", "gauge", "Share of KV-cache blocks in use.", m.KvTotalBlocks == 0 ? 0 : (double)m.KvUsedBlocks / m.KvTotalBlocks);
        Metric("kv_cache_blocks_used", "gauge", "KV-cache blocks in use (sequences and prefix cache).", m.KvUsedBlocks);
        Metric("prefix_cache_blocks", "gauge", "KV-cache blocks the prefix cache keeps.", m.PrefixCachedBlocks);
        context.Response.ContentType = "text/plain; version=0.0.4";
        return context.Response.WriteAsync(text.ToString());
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            await _app.StopAsync().ConfigureAwait(false);
        }
        finally
        {
            Scheduler.Dispose();
            await _app.DisposeAsync().ConfigureAwait(false);
        }
    }
}
