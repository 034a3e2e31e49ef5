using System.Runtime.CompilerServices;
using System.Text.Json;
using System.Threading.Channels;
using Engine.Api;
using Engine.Constraints;
using Engine.Serving;
using Microsoft.Extensions.AI;

namespace Engine.Chat;

/// <summary>
/// Microsoft.Extensions.AI's <see cref="IChatClient"/> over a model in this process: the messages rendered
/// through the model's chat template (tools included), the answer streamed as text, reasoning and tool
/// calls parsed in the model family's syntax, usage and finish reason reported. One generation runs at a
/// time (callers queue); the KV cache keeps the last conversation, so a follow-up that resends the history
/// prefills only what is new (<see cref="UsageDetails.CachedInputTokenCount"/> says how much was reused).
/// </summary>
/// <remarks>
/// Options: <c>Temperature</c>, <c>TopP</c>, <c>TopK</c>, <c>Seed</c>, <c>FrequencyPenalty</c>,
/// <c>PresencePenalty</c>, <c>MaxOutputTokens</c>, <c>StopSequences</c>, <c>ResponseFormat</c> (JSON,
/// with or without a schema: the output is constrained to it), <c>Tools</c> with <c>ToolMode</c> auto or
/// none, <c>Instructions</c> (a system message). Engine-specific, in <c>AdditionalProperties</c>:
/// <c>"grammar"</c> (GBNF text), <c>"min_p"</c>, <c>"repeat_penalty"</c>. A required tool call
/// (<c>ToolMode</c> RequireAny/RequireSpecific) and non-text content are refused with
/// <see cref="NotSupportedException"/>, never ignored.
/// </remarks>
public sealed class ModelChatClient : IChatClient
{
    private readonly LanguageModel _model;
    private readonly ChatTemplate _template;
    private readonly GenerationOptions _defaults;
    private readonly Session _session;
    private readonly SemaphoreSlim _gate = new(1, 1);
    private readonly ToolCallFormat _toolFormat;
    private readonly ChatClientMetadata _metadata;
    private bool _disposed;

    /// <param name="model">The model (the caller keeps owning it).</param>
    /// <param name="template">The chat template; the model's own when null.</param>
    /// <param name="defaults">What a request that does not say otherwise gets (sampling, most tokens).</param>
    /// <exception cref="InvalidOperationException">No template given and the model has none.</exception>
    public ModelChatClient(LanguageModel model, ChatTemplate? template = null, GenerationOptions? defaults = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        _model = model;
        _template = template ?? model.GetChatTemplate()
            ?? throw new InvalidOperationException($"{Path.GetFileName(model.Path)} has no chat template: pass one (ChatTemplate) to the client");
        _defaults = defaults ?? new GenerationOptions { MaxTokens = 512 };
        _defaults.Validate();
        _session = model.CreateSession();
        _toolFormat = ToolCallParser.Detect(_template.Source);
        _metadata = new ChatClientMetadata("engine", null, Path.GetFileName(model.Path));
    }

    /// <inheritdoc/>
    public async Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default) =>
        await GetStreamingResponseAsync(messages, options, cancellationToken).ToChatResponseAsync(cancellationToken).ConfigureAwait(false);

    /// <inheritdoc/>
    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentNullException.ThrowIfNull(messages);
        // everything that can be refused is refused before the first update
        var request = Prepare(messages, options);
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        // bounded: the generation runs at most a few pieces ahead of the reader
        var channel = Channel.CreateBounded<ChatResponseUpdate>(new BoundedChannelOptions(16) { SingleReader = true, SingleWriter = true });
        // the generation runs on the thread pool: the caller's thread only awaits the pieces
        var producer = Task.Run(() => Generate(request, channel.Writer, stop.Token), CancellationToken.None);
        try
        {
            await foreach (var update in channel.Reader.ReadAllAsync(cancellationToken).ConfigureAwait(false))
            {
                cancellationToken.ThrowIfCancellationRequested(); // pieces already waiting are not delivered after a cancel
                yield return update;
            }
            await producer.ConfigureAwait(false); // its exception, if any
        }
        finally
        {
            await stop.CancelAsync().ConfigureAwait(false); // a consumer that stopped early stops the generation
            try
            {
                await producer.ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
            }
            catch (Exception) when (cancellationToken.IsCancellationRequested)
            {
            }
            finally
            {
                _gate.Release();
            }
        }
    }

    /// <summary>A request turned into what the engine runs.</summary>
    private sealed record Request(List<object?> Messages, IReadOnlyList<object?>? Tools, GenerationOptions Generation, IReadOnlyList<string> Stops);

    private Request Prepare(IEnumerable<ChatMessage> messages, ChatOptions? options)
    {
        var list = new List<object?>();
        if (options?.Instructions is { Length: > 0 } instructions)
            list.Add(ChatTemplate.Message("system", instructions));
        foreach (var message in messages)
            list.AddRange(ToTemplate(message));
        IReadOnlyList<object?>? tools = null;
        if (options?.Tools is { Count: > 0 } declared && options.ToolMode is not NoneChatToolMode)
        {
            if (options.ToolMode is RequiredChatToolMode)
                throw new NotSupportedException("ToolMode RequireAny/RequireSpecific: the engine does not force a tool call; use Auto or None");
            tools = [.. declared.Select(Tool)];
        }
        var sampling = _defaults.Sampling;
        if (options is not null)
        {
            sampling = sampling with
            {
                Temperature = options.Temperature ?? sampling.Temperature,
                TopP = options.TopP ?? sampling.TopP,
                TopK = options.TopK ?? sampling.TopK,
                Seed = options.Seed is long seed ? unchecked((ulong)seed) : sampling.Seed,
                FrequencyPenalty = options.FrequencyPenalty ?? sampling.FrequencyPenalty,
                PresencePenalty = options.PresencePenalty ?? sampling.PresencePenalty,
                MinP = Extra<float?>(options, "min_p") ?? sampling.MinP,
                RepeatPenalty = Extra<float?>(options, "repeat_penalty") ?? sampling.RepeatPenalty,
            };
        }
        var generation = _defaults with
        {
            MaxTokens = options?.MaxOutputTokens ?? _defaults.MaxTokens,
            Sampling = sampling,
            Grammar = GrammarOf(options) ?? _defaults.Grammar,
        };
        generation.Validate();
        return new Request(list, tools, generation, options?.StopSequences is { } s ? [.. s] : []);
    }

    /// <summary>A JSON object with whitespace allowed: what <c>ChatResponseFormat.Json</c> without a schema asks for.</summary>
    private static readonly Lazy<Grammar> AnyJsonObject = new(() => JsonSchemaGrammar.Compile("{\"type\": \"object\"}", whitespace: true));

    private static Grammar? GrammarOf(ChatOptions? options)
    {
        string? gbnf = Extra<string>(options, "grammar");
        if (gbnf is not null && options?.ResponseFormat is ChatResponseFormatJson)
            throw new ArgumentException("give either ResponseFormat JSON or AdditionalProperties[\"grammar\"], not both");
        if (gbnf is not null)
            return Gbnf.Parse(gbnf);
        return options?.ResponseFormat switch
        {
            ChatResponseFormatJson { Schema: JsonElement schema } => JsonSchemaGrammar.Compile(schema.GetRawText()),
            ChatResponseFormatJson => AnyJsonObject.Value,
            _ => null,
        };
    }

    private static T? Extra<T>(ChatOptions? options, string key)
    {
        if (options?.AdditionalProperties is not { } extra || !extra.TryGetValue(key, out object? value) || value is null)
            return default;
        try
        {
            return value is JsonElement e ? e.Deserialize<T>() : (T?)Convert.ChangeType(value, Nullable.GetUnderlyingType(typeof(T)) ?? typeof(T), System.Globalization.CultureInfo.InvariantCulture);
        }
        catch (Exception ex) when (ex is InvalidCastException or FormatException or JsonException or OverflowException)
        {
            throw new ArgumentException($"AdditionalProperties[\"{key}\"]: '{value}' is not a {typeof(T).Name}", ex);
        }
    }

    /// <summary>A tool as chat templates expect it: <c>{"type": "function", "function": {name, description, parameters}}</c>.</summary>
    private static object? Tool(AITool tool)
    {
        if (tool is not AIFunctionDeclaration function)
            throw new NotSupportedException($"tool '{tool.Name}' ({tool.GetType().Name}): only functions can be offered to a local model");
        var json = new Dictionary<string, object?>
        {
            ["type"] = "function",
            ["function"] = new Dictionary<string, object?>
            {
                ["name"] = function.Name,
                ["description"] = function.Description,
                ["parameters"] = function.JsonSchema,
            },
        };
        using var doc = JsonDocument.Parse(JsonSerializer.Serialize(json));
        return Jinja.PyValue.FromJson(doc.RootElement.Clone());
    }

    /// <summary>One message as template messages: text, reasoning and tool calls in one; each tool result a message of its own.</summary>
    private static IEnumerable<object?> ToTemplate(ChatMessage message)
    {
        string role = message.Role.Value;
        var text = new System.Text.StringBuilder();
        var reasoning = new System.Text.StringBuilder();
        var calls = new List<object?>();
        var results = new List<object?>();
        foreach (var content in message.Contents)
        {
            switch (content)
            {
                case TextContent t:
                    text.Append(t.Text);
                    break;
                case TextReasoningContent r:
                    reasoning.Append(r.Text);
                    break;
                case FunctionCallContent call:
                    string arguments = JsonSerializer.Serialize(call.Arguments ?? new Dictionary<string, object?>());
                    using (var doc = JsonDocument.Parse(arguments))
                        calls.Add(ChatTemplate.ToolCall(call.CallId, call.Name, Jinja.PyValue.FromJson(doc.RootElement)));
                    break;
                case FunctionResultContent result:
                    var m = ChatTemplate.Message("tool", result.Result switch
                    {
                        null => "",
                        string s => s,
                        JsonElement e => e.ValueKind == JsonValueKind.String ? e.GetString()! : e.GetRawText(),
                        var other => JsonSerializer.Serialize(other),
                    });
                    m["tool_call_id"] = result.CallId;
                    results.Add(m);
                    break;
                case UsageContent:
                    break;
                default:
                    throw new NotSupportedException($"message content of type {content.GetType().Name} (role {role}): a local text model reads text, reasoning, tool calls and tool results");
            }
        }
        if (text.Length > 0 || calls.Count > 0 || results.Count == 0)
        {
            var m = ChatTemplate.Message(role, text.ToString());
            if (reasoning.Length > 0)
                m["reasoning_content"] = reasoning.ToString();
            if (calls.Count > 0)
                m["tool_calls"] = calls;
            yield return m;
        }
        foreach (var r in results)
            yield return r;
    }

    /// <summary>The generation, on the thread pool: pieces through the stop strings and the reply parser into updates.</summary>
    private void Generate(Request request, ChannelWriter<ChatResponseUpdate> writer, CancellationToken cancellationToken)
    {
        try
        {
            string prompt = _template.Render(request.Messages, addGenerationPrompt: true, request.Tools);
            var ids = _model.Tokenizer.Encode(prompt, addSpecial: false, parseSpecial: true);
            int common = _session.RewindToCommonPrefix(ids); // the longest prefix the cache already holds stays
            string responseId = Guid.NewGuid().ToString("N");
            string modelId = _metadata.DefaultModelId!;
            ChatResponseUpdate Update(IList<AIContent> contents) => new(ChatRole.Assistant, contents) { ResponseId = responseId, MessageId = responseId, ModelId = modelId };
            bool thinkingOpened = prompt.TrimEnd().EndsWith("<think>", StringComparison.Ordinal);
            var parser = new ChatStreamParser(request.Tools is null ? ToolCallFormat.None : _toolFormat, thinkingOpened);
            var stops = new StopSequences(request.Stops);
            var detokenizer = _model.Tokenizer.CreateStreamingDetokenizer();
            int generated = 0;
            void Emit(string text)
            {
                var (content, reasoning) = parser.Push(text);
                var contents = new List<AIContent>();
                if (reasoning.Length > 0)
                    contents.Add(new TextReasoningContent(reasoning));
                if (content.Length > 0)
                    contents.Add(new TextContent(content));
                if (contents.Count > 0)
                    Write(writer, Update(contents), cancellationToken);
            }
            foreach (int id in _session.Generate(ids.GetRange(common, ids.Count - common), request.Generation, cancellationToken))
            {
                generated++;
                Emit(stops.Push(detokenizer.Push(id)));
                if (stops.Stopped)
                    break;
            }
            if (!stops.Stopped)
                Emit(stops.Push(detokenizer.Flush()) + stops.Flush());
            var (reply, lastContent, lastReasoning) = parser.Finish();
            var final = new List<AIContent>();
            if (lastReasoning.Length > 0)
                final.Add(new TextReasoningContent(lastReasoning));
            if (lastContent.Length > 0)
                final.Add(new TextContent(lastContent));
            for (int i = 0; i < reply.ToolCalls.Count; i++)
            {
                var call = reply.ToolCalls[i];
                using var doc = JsonDocument.Parse(call.Arguments);
                var arguments = doc.RootElement.ValueKind == JsonValueKind.Object
                    ? doc.RootElement.EnumerateObject().ToDictionary(p => p.Name, p => (object?)p.Value.Clone())
                    : new Dictionary<string, object?> { ["value"] = doc.RootElement.Clone() };
                final.Add(new FunctionCallContent(call.Id ?? $"call_{responseId[..8]}_{i}", call.Name, arguments));
            }
            var stats = _session.LastStats;
            final.Add(new UsageContent(new UsageDetails
            {
                InputTokenCount = ids.Count,
                CachedInputTokenCount = common,
                OutputTokenCount = generated,
                TotalTokenCount = ids.Count + generated,
            }));
            var finish = reply.ToolCalls.Count > 0 ? ChatFinishReason.ToolCalls
                : stops.Stopped ? ChatFinishReason.Stop
                : stats?.StopReason is StopReason.MaxTokens or StopReason.ContextFull ? ChatFinishReason.Length
                : ChatFinishReason.Stop;
            var last = Update(final);
            last.FinishReason = finish;
            Write(writer, last, cancellationToken);
            writer.TryComplete();
        }
        catch (Exception e)
        {
            writer.TryComplete(e);
        }
    }

    /// <summary>Waits for room in the channel (the reader is slower than the model) or the cancellation.</summary>
    private static void Write(ChannelWriter<ChatResponseUpdate> writer, ChatResponseUpdate update, CancellationToken cancellationToken)
    {
        while (!writer.TryWrite(update))
        {
            if (!writer.WaitToWriteAsync(cancellationToken).AsTask().GetAwaiter().GetResult())
                return; // completed by the reader's side
        }
    }

    /// <inheritdoc/>
    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null)
            return null;
        if (serviceType == typeof(ChatClientMetadata))
            return _metadata;
        if (serviceType == typeof(LanguageModel))
            return _model;
        if (serviceType == typeof(ChatTemplate))
            return _template;
        return serviceType.IsInstanceOfType(this) ? this : null;
    }

    /// <summary>Frees the client's session (its KV cache); the model stays with its owner.</summary>
    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        _gate.Wait();
        try
        {
            _session.Dispose();
        }
        finally
        {
            _gate.Release();
            _gate.Dispose();
        }
    }
}
