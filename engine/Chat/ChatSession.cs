using Engine.Api;

namespace Engine.Chat;

/// <summary>
/// A conversation with an instruction-tuned model: the messages so far, rendered through the model's
/// chat template each turn, over one <see cref="Session"/> whose KV cache keeps the history — each turn
/// prefills only what the new rendering adds after the longest prefix the cache already holds (a
/// template that re-renders history differently, as Qwen3 drops old reasoning, costs only from the
/// first difference).
/// </summary>
public sealed class ChatSession : IDisposable
{
    private readonly LanguageModel _model;
    private readonly ChatTemplate _template;
    private readonly Session _session;
    private readonly List<object?> _messages = [];

    public ChatSession(LanguageModel model, ChatTemplate template, string? systemPrompt = null)
    {
        _model = model;
        _template = template;
        _session = model.CreateSession();
        SystemPrompt = systemPrompt;
        Reset();
    }

    public string? SystemPrompt { get; }

    /// <summary>How this model writes tool calls (from its template's markers).</summary>
    public ToolCallFormat ToolCallFormat => ToolCallParser.Detect(_template.Source);

    /// <summary>The last answer split into its text, reasoning and tool calls (null before the first).</summary>
    public AssistantReply? LastReply { get; private set; }

    /// <summary>The conversation (role and content of each message) so far.</summary>
    public IReadOnlyList<object?> Messages => _messages;

    /// <summary>Tokens the last turn prefilled (what the cache did not already hold).</summary>
    public int LastPrefill { get; private set; }

    /// <summary>Starts over: only the system prompt, an empty cache.</summary>
    public void Reset()
    {
        _messages.Clear();
        _session.Reset();
        if (SystemPrompt is not null)
            _messages.Add(ChatTemplate.Message("system", SystemPrompt));
    }

    /// <summary>
    /// Adds the user's message and streams the assistant's answer as text pieces (never half a UTF-8
    /// character); the answer joins the conversation when the stream ends, also when it is cancelled.
    /// </summary>
    public IEnumerable<string> Ask(string user, GenerationOptions options, CancellationToken cancellationToken = default)
    {
        _messages.Add(ChatTemplate.Message("user", user));
        string prompt = _template.Render(_messages, addGenerationPrompt: true);
        var ids = _model.Tokenizer.Encode(prompt, addSpecial: false, parseSpecial: true);
        int common = _session.RewindToCommonPrefix(ids); // keep the longest prefix the cache already holds
        LastPrefill = ids.Count - common;
        return Stream(ids.GetRange(common, ids.Count - common), options, cancellationToken);
    }

    private IEnumerable<string> Stream(List<int> prompt, GenerationOptions options, CancellationToken cancellationToken)
    {
        var detokenizer = _model.Tokenizer.CreateStreamingDetokenizer();
        var answer = new System.Text.StringBuilder();
        try
        {
            foreach (int id in _session.Generate(prompt, options, cancellationToken))
            {
                string piece = detokenizer.Push(id);
                answer.Append(piece);
                if (piece.Length > 0)
                    yield return piece;
            }
            string rest = detokenizer.Flush();
            answer.Append(rest);
            if (rest.Length > 0)
                yield return rest;
        }
        finally
        {
            // the history keeps the answer as the templates expect it: text, reasoning apart, tool calls structured
            var reply = LastReply = ToolCallParser.Parse(answer.ToString(), ToolCallFormat);
            var message = ChatTemplate.Message("assistant", reply.Content);
            if (reply.Reasoning is not null)
                message["reasoning_content"] = reply.Reasoning;
            if (reply.ToolCalls.Count > 0)
            {
                message["tool_calls"] = reply.ToolCalls.Select((c, i) =>
                {
                    using var arguments = System.Text.Json.JsonDocument.Parse(c.Arguments);
                    return (object?)ChatTemplate.ToolCall(c.Id ?? $"call_{_messages.Count}_{i}", c.Name, Jinja.PyValue.FromJson(arguments.RootElement));
                }).ToList();
            }
            _messages.Add(message);
        }
    }

    public void Dispose() => _session.Dispose();
}
