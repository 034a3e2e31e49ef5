using System.Text.Json;
using Engine.Chat.Jinja;
using Engine.Formats;
using Engine.Formats.Gguf;

namespace Engine.Chat;

/// <summary>
/// A model's chat template: the Jinja program that turns a conversation into the prompt the model was
/// trained on, from GGUF <c>tokenizer.chat_template</c> (or a named alternate,
/// <c>tokenizer.chat_template.NAME</c>, such as <c>tool_use</c>) or an HF folder's
/// <c>chat_template.jinja</c> / <c>tokenizer_config.json</c> <c>chat_template</c> (a string, or a list of
/// named templates). Rendered as transformers' <c>apply_chat_template</c> renders it.
/// </summary>
public sealed class ChatTemplate
{
    private readonly JinjaTemplate _template;

    public ChatTemplate(string source, string? bosToken = null, string? eosToken = null, string name = "default")
    {
        _template = JinjaTemplate.Parse(source);
        BosToken = bosToken ?? "";
        EosToken = eosToken ?? "";
        Name = name;
    }

    /// <summary>Which of the model's templates this is ("default", "tool_use", …).</summary>
    public string Name { get; }

    public string BosToken { get; }

    public string EosToken { get; }

    public string Source => _template.Source;

    /// <summary>
    /// The prompt for <paramref name="messages"/> (each a role and content, and where the template handles
    /// them tool calls, tool results and reasoning). <paramref name="addGenerationPrompt"/> opens the
    /// assistant's turn; <paramref name="tools"/> are OpenAI-style tool definitions; <paramref name="extra"/>
    /// adds variables some templates read (<c>enable_thinking</c>, <c>date_string</c>, …).
    /// </summary>
    /// <exception cref="JinjaException">The template refused the conversation (its line is named).</exception>
    public string Render(IReadOnlyList<object?> messages, bool addGenerationPrompt = true, IReadOnlyList<object?>? tools = null,
        IReadOnlyDictionary<string, object?>? extra = null, DateTime? now = null)
    {
        var variables = new Dictionary<string, object?>(StringComparer.Ordinal)
        {
            ["messages"] = messages,
            ["add_generation_prompt"] = addGenerationPrompt,
            ["bos_token"] = BosToken,
            ["eos_token"] = EosToken,
        };
        if (tools is not null)
            variables["tools"] = tools;
        if (extra is not null)
        {
            foreach (var (k, v) in extra)
                variables[k] = v;
        }
        return _template.Render(variables, now);
    }

    /// <summary>A message of plain text, as the templates expect it.</summary>
    public static OrderedDictionary<string, object?> Message(string role, string content) =>
        new(StringComparer.Ordinal) { ["role"] = role, ["content"] = content };

    /// <summary>A tool call as the templates expect it in an assistant message's <c>tool_calls</c>: <c>{id, type: "function", function: {name, arguments}}</c>.</summary>
    /// <param name="arguments">The arguments as a template value (a dictionary from <see cref="Jinja.PyValue.FromJson"/>, or a string).</param>
    public static OrderedDictionary<string, object?> ToolCall(string? id, string name, object? arguments) =>
        new(StringComparer.Ordinal)
        {
            ["id"] = id,
            ["type"] = "function",
            ["function"] = new OrderedDictionary<string, object?>(StringComparer.Ordinal) { ["name"] = name, ["arguments"] = arguments },
        };

    /// <summary>The names of a GGUF file's templates ("default" for tokenizer.chat_template).</summary>
    public static IReadOnlyList<string> Names(GgufMetadata m) =>
        [.. m.Keys.Where(k => k == "tokenizer.chat_template" || k.StartsWith("tokenizer.chat_template.", StringComparison.Ordinal))
            .Select(k => k == "tokenizer.chat_template" ? "default" : k["tokenizer.chat_template.".Length..])];

    /// <summary>A GGUF file's template <paramref name="name"/> (null: the default), or null when it has none.</summary>
    /// <exception cref="ModelFormatException">The named template is not there, or it does not parse.</exception>
    public static ChatTemplate? FromGguf(GgufMetadata m, string? bosToken, string? eosToken, string? name = null)
    {
        string key = name is null or "default" ? "tokenizer.chat_template" : "tokenizer.chat_template." + name;
        if (!m.Contains(key))
        {
            return name is null ? null
                : throw new ModelFormatException(m.File, key, $"no chat template '{name}' (the file has: {string.Join(", ", Names(m).DefaultIfEmpty("none"))})");
        }
        return Parse(m.GetString(key), bosToken, eosToken, name ?? "default", m.File, key);
    }

    /// <summary>An HF folder's template: <c>chat_template.jinja</c>, else tokenizer_config.json's <c>chat_template</c>; null when neither.</summary>
    public static ChatTemplate? FromHfFolder(string folder, string? bosToken, string? eosToken, string? name = null)
    {
        string file = Path.Combine(folder, "chat_template.jinja");
        if (File.Exists(file) && name is null or "default")
            return Parse(File.ReadAllText(file), bosToken, eosToken, "default", file, "template");
        string config = Path.Combine(folder, "tokenizer_config.json");
        if (!File.Exists(config))
            return null;
        using var doc = HfJson.Parse(config);
        if (!doc.RootElement.TryGetProperty("chat_template", out var t) || t.ValueKind == JsonValueKind.Null)
            return name is null ? null : throw new ModelFormatException(config, "chat_template", $"no chat template '{name}'");
        if (t.ValueKind == JsonValueKind.String)
            return Parse(t.GetString()!, bosToken, eosToken, "default", config, "chat_template");
        if (t.ValueKind == JsonValueKind.Array)
        {
            foreach (var entry in t.EnumerateArray())
            {
                if (entry.ValueKind == JsonValueKind.Object && entry.TryGetProperty("name", out var n) && n.GetString() == (name ?? "default")
                    && entry.TryGetProperty("template", out var source) && source.ValueKind == JsonValueKind.String)
                    return Parse(source.GetString()!, bosToken, eosToken, name ?? "default", config, $"chat_template['{name ?? "default"}']");
            }
            return name is null ? null : throw new ModelFormatException(config, "chat_template", $"no chat template '{name}'");
        }
        throw new ModelFormatException(config, "chat_template", "must be a string or a list of {name, template}");
    }

    private static ChatTemplate Parse(string source, string? bos, string? eos, string name, string file, string field)
    {
        try
        {
            return new ChatTemplate(source, bos, eos, name);
        }
        catch (JinjaException e)
        {
            throw new ModelFormatException(file, field, $"the chat template does not parse: {e.Message}", e);
        }
    }
}
