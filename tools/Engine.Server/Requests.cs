using System.Text.Json;
using Engine.Chat.Jinja;
using Engine.Sampling;

namespace Engine.Server;

/// <summary>The fields of a completion request the server acts on, read and checked (errors name the field).</summary>
public sealed record RequestParameters
{
    public required string? Model { get; init; }
    public bool Stream { get; init; }
    public bool IncludeUsage { get; init; }
    public int? MaxTokens { get; init; }
    public SamplingOptions Sampling { get; init; } = new();
    public IReadOnlyList<string> Stop { get; init; } = [];
    public int N { get; init; } = 1;
    public int TopLogprobs { get; init; } = -1;
    public bool IgnoreEos { get; init; }
    /// <summary>response_format json_object / json_schema, or llama.cpp's grammar / json_schema fields, compiled.</summary>
    public Engine.Constraints.Grammar? Grammar { get; init; }

    // chat only
    public IReadOnlyList<object?> Messages { get; init; } = [];
    public IReadOnlyList<object?>? Tools { get; init; }

    // completions only
    public string? Prompt { get; init; }
    /// <summary>A prompt given as token ids (OpenAI's list-of-integers form), used exactly as given.</summary>
    public IReadOnlyList<int>? PromptTokens { get; init; }
    public bool Echo { get; init; }
}

/// <summary>
/// Reads OpenAI request bodies. Every field is type-checked; fields the engine cannot honour yet are
/// refused with a 400 that says so rather than silently ignored (a client asking for JSON output must
/// not get free text).
/// </summary>
public static class RequestReader
{
    /// <summary>JSON mode's grammar (any object, whitespace allowed), compiled once: its mask caches serve every request.</summary>
    private static class JsonObjectGrammar
    {
        public static readonly Engine.Constraints.Grammar Value = Engine.Constraints.JsonSchemaGrammar.Compile("{\"type\": \"object\"}", whitespace: true);
    }

    /// <summary>Most bytes a request body may have.</summary>
    public const int MaxBodyBytes = 8 << 20;

    public static JsonDocument Parse(ReadOnlyMemory<byte> body)
    {
        try
        {
            var doc = JsonDocument.Parse(body, new JsonDocumentOptions { MaxDepth = 64 });
            var kind = doc.RootElement.ValueKind;
            if (kind != JsonValueKind.Object)
            {
                doc.Dispose();
                throw ApiError.BadRequest($"the request body must be a JSON object, not {Kind(kind)}");
            }
            return doc;
        }
        catch (JsonException e)
        {
            throw ApiError.BadRequest($"the request body is not valid JSON: {e.Message}");
        }
    }

    public static RequestParameters Chat(JsonElement root) => Checked(() => ReadChat(root));

    public static RequestParameters Completion(JsonElement root) => Checked(() => ReadCompletion(root));

    /// <summary>A string that is not valid UTF-16 (a lone surrogate escape) is the client's error too.</summary>
    private static T Checked<T>(Func<T> read)
    {
        try
        {
            return read();
        }
        catch (InvalidOperationException e)
        {
            throw ApiError.BadRequest($"a value of the request cannot be read: {e.Message}");
        }
    }

    private static RequestParameters ReadChat(JsonElement root)
    {
        var p = Common(root, chat: true);
        if (!root.TryGetProperty("messages", out var messages))
            throw ApiError.BadRequest("'messages' is required", "messages");
        if (messages.ValueKind != JsonValueKind.Array || messages.GetArrayLength() == 0)
            throw ApiError.BadRequest("'messages' must be a non-empty array", "messages");
        var list = new List<object?>();
        int i = 0;
        foreach (var m in messages.EnumerateArray())
        {
            list.Add(Message(m, $"messages[{i}]"));
            i++;
        }
        IReadOnlyList<object?>? tools = null;
        if (Get(root, "tools") is { } t)
        {
            if (t.ValueKind != JsonValueKind.Array)
                throw ApiError.BadRequest("'tools' must be an array", "tools");
            int k = 0;
            foreach (var tool in t.EnumerateArray())
            {
                if (tool.ValueKind != JsonValueKind.Object || !tool.TryGetProperty("function", out var f) || f.ValueKind != JsonValueKind.Object
                    || !f.TryGetProperty("name", out var name) || name.ValueKind != JsonValueKind.String)
                    throw ApiError.BadRequest($"tools[{k}] must be {{\"type\": \"function\", \"function\": {{\"name\": ..., \"parameters\": ...}}}}", $"tools[{k}]");
                k++;
            }
            tools = (IReadOnlyList<object?>?)PyValue.FromJson(t);
        }
        if (Get(root, "tool_choice") is { } choice)
        {
            if (choice.ValueKind == JsonValueKind.String)
            {
                string c = choice.GetString()!;
                if (c == "none")
                    tools = null;
                else if (c != "auto" && c != "required")
                    throw ApiError.BadRequest($"'tool_choice' must be none, auto, required or a function; got '{c}'", "tool_choice");
            }
            else if (choice.ValueKind != JsonValueKind.Object)
                throw ApiError.BadRequest("'tool_choice' must be a string or an object", "tool_choice");
        }
        if (Get(root, "logprobs") is { } lp && Bool(lp, "logprobs"))
            p = p with { TopLogprobs = Math.Max(0, Int(root, "top_logprobs", 0, 20) ?? 0) };
        else if (Get(root, "top_logprobs") is not null)
            throw ApiError.BadRequest("'top_logprobs' needs 'logprobs': true", "top_logprobs");
        return p with { Messages = list, Tools = tools };
    }

    private static RequestParameters ReadCompletion(JsonElement root)
    {
        var p = Common(root, chat: false);
        if (!root.TryGetProperty("prompt", out var prompt))
            throw ApiError.BadRequest("'prompt' is required", "prompt");
        IReadOnlyList<int>? ids = null;
        if (prompt.ValueKind == JsonValueKind.Array && prompt.GetArrayLength() > 0 && prompt[0].ValueKind == JsonValueKind.Number)
        {
            ids = [.. prompt.EnumerateArray().Select((t, i) => t.ValueKind == JsonValueKind.Number && t.TryGetInt32(out int id) && id >= 0
                ? id : throw ApiError.BadRequest($"prompt[{i}] must be a token id (a non-negative integer)", "prompt"))];
        }
        string? text = ids is not null ? null : prompt.ValueKind switch
        {
            JsonValueKind.String => prompt.GetString()!,
            JsonValueKind.Array when prompt.GetArrayLength() == 1 && prompt[0].ValueKind == JsonValueKind.String => prompt[0].GetString()!,
            _ => throw ApiError.BadRequest("'prompt' must be a string, a list of one string, or a list of token ids", "prompt"),
        };
        int? logprobs = Int(root, "logprobs", 0, 20);
        bool echo = Get(root, "echo") is { } e && Bool(e, "echo");
        if (echo && ids is not null)
            throw ApiError.BadRequest("'echo' needs a text prompt", "echo");
        return p with { Prompt = text, PromptTokens = ids, TopLogprobs = logprobs ?? -1, Echo = echo };
    }

    private static RequestParameters Common(JsonElement root, bool chat)
    {
        string? model = Get(root, "model") is { } m ? m.ValueKind == JsonValueKind.String ? m.GetString() : throw ApiError.BadRequest("'model' must be a string", "model") : null;
        bool stream = Get(root, "stream") is { } s && Bool(s, "stream");
        bool usage = false;
        if (Get(root, "stream_options") is { } so)
        {
            if (so.ValueKind != JsonValueKind.Object)
                throw ApiError.BadRequest("'stream_options' must be an object", "stream_options");
            usage = Get(so, "include_usage") is { } iu && Bool(iu, "stream_options.include_usage");
        }
        int? maxTokens = Int(root, "max_completion_tokens", 0, int.MaxValue) ?? Int(root, "max_tokens", 0, int.MaxValue);
        float temperature = Float(root, "temperature", 0, 2) ?? 1f;
        float topP = Float(root, "top_p", 0, 1) ?? 1f;
        if (topP == 0)
            throw ApiError.BadRequest("'top_p' must be greater than 0", "top_p");
        int topK = Int(root, "top_k", 0, int.MaxValue) ?? 0;
        float minP = Float(root, "min_p", 0, 1) ?? 0f;
        long? seed = Get(root, "seed") is { } sd
            ? sd.ValueKind == JsonValueKind.Number && sd.TryGetInt64(out long v) ? v : throw ApiError.BadRequest("'seed' must be an integer", "seed")
            : null;
        // OpenAI's penalties and logit_bias, applied as llama.cpp's server applies them (over the last
        // repeat_last_n tokens of the context, 64 by default), and llama.cpp's own sampler fields
        Dictionary<int, float>? bias = null;
        if (Get(root, "logit_bias") is { } lb)
        {
            if (lb.ValueKind != JsonValueKind.Object)
                throw ApiError.BadRequest("'logit_bias' must be an object of token ids to biases", "logit_bias");
            bias = [];
            foreach (var entry in lb.EnumerateObject())
            {
                if (!int.TryParse(entry.Name, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int id))
                    throw ApiError.BadRequest($"'logit_bias' key '{entry.Name}' is not a token id", "logit_bias");
                bias[id] = Float(lb, entry.Name, -100, 100)!.Value;
            }
            if (bias.Count > 1024)
                throw ApiError.BadRequest($"'logit_bias' holds {bias.Count} tokens; at most 1024", "logit_bias");
        }
        float mirostatTau = Float(root, "mirostat_tau", 0.001f, 100) ?? 5f;
        int mirostat = Int(root, "mirostat", 0, 2) ?? 0;
        Engine.Constraints.Grammar? grammar = null;
        try
        {
            if (Get(root, "response_format") is { } rf)
            {
                string? type = rf.ValueKind == JsonValueKind.Object && rf.TryGetProperty("type", out var ty) && ty.ValueKind == JsonValueKind.String ? ty.GetString() : null;
                if (type is null)
                    throw ApiError.BadRequest("'response_format' must be an object with a 'type'", "response_format");
                grammar = type switch
                {
                    "text" => null,
                    "json_object" => JsonObjectGrammar.Value,
                    "json_schema" => Engine.Constraints.JsonSchemaGrammar.Compile(
                        rf.TryGetProperty("json_schema", out var js) && js.ValueKind == JsonValueKind.Object && js.TryGetProperty("schema", out var schema)
                            ? schema.GetRawText()
                            : throw ApiError.BadRequest("response_format json_schema needs 'json_schema': {'schema': {...}}", "response_format.json_schema")),
                    _ => throw ApiError.BadRequest($"response_format '{type}' must be text, json_object or json_schema", "response_format"),
                };
            }
            if (Get(root, "json_schema") is { } llamaSchema) // llama.cpp's server field
                grammar = Engine.Constraints.JsonSchemaGrammar.Compile(llamaSchema.GetRawText());
            if (Get(root, "grammar") is { } gbnf)
            {
                grammar = gbnf.ValueKind == JsonValueKind.String
                    ? Engine.Constraints.Gbnf.Parse(gbnf.GetString()!)
                    : throw ApiError.BadRequest("'grammar' must be GBNF text", "grammar");
            }
        }
        catch (Engine.Constraints.GrammarException e)
        {
            throw ApiError.BadRequest(e.Message, "response_format");
        }
        IReadOnlyList<string> stop = [];
        if (Get(root, "stop") is { } st)
        {
            stop = st.ValueKind switch
            {
                JsonValueKind.String => [st.GetString()!],
                JsonValueKind.Array => [.. st.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.String ? e.GetString()! : throw ApiError.BadRequest("'stop' must hold strings", "stop"))],
                _ => throw ApiError.BadRequest("'stop' must be a string or an array of strings", "stop"),
            };
            if (stop.Count > 4 || stop.Any(x => x.Length == 0 || x.Length > 256))
                throw ApiError.BadRequest("'stop' takes at most 4 non-empty strings of at most 256 characters", "stop");
        }
        int n = Int(root, "n", 1, 8) ?? 1;
        var sampling = new SamplingOptions
        {
            Temperature = temperature,
            TopK = temperature == 0 ? 0 : topK,
            TopP = topP,
            MinP = minP,
            Seed = seed is long x ? unchecked((ulong)x) : (ulong)Random.Shared.NextInt64(),
            PresencePenalty = Float(root, "presence_penalty", -2, 2) ?? 0f,
            FrequencyPenalty = Float(root, "frequency_penalty", -2, 2) ?? 0f,
            RepeatPenalty = Float(root, "repeat_penalty", 0.001f, 10) ?? 1f,
            RepeatLastN = Int(root, "repeat_last_n", 0, 1 << 16) ?? 64,
            LogitBias = bias is { Count: > 0 } ? bias : null,
            TypicalP = Float(root, "typical_p", 0.001f, 1) ?? 1f,
            TopNSigma = Float(root, "top_n_sigma", -1, 100) ?? -1f,
            XtcProbability = Float(root, "xtc_probability", 0, 1) ?? 0f,
            XtcThreshold = Float(root, "xtc_threshold", 0.001f, 0.5f) ?? 0.1f,
            DryMultiplier = Float(root, "dry_multiplier", 0, 100) ?? 0f,
            DryBase = Float(root, "dry_base", 1, 100) ?? 1.75f,
            DryAllowedLength = Int(root, "dry_allowed_length", 1, 1 << 16) ?? 2,
            Mirostat = temperature == 0 ? 0 : mirostat,
            MirostatTau = mirostatTau,
            MirostatEta = Float(root, "mirostat_eta", 0.0001f, 10) ?? 0.1f,
        };
        return new RequestParameters
        {
            Model = model, Stream = stream, IncludeUsage = usage, MaxTokens = maxTokens, Sampling = sampling, Stop = stop, N = n,
            IgnoreEos = Get(root, "ignore_eos") is { } ie && Bool(ie, "ignore_eos"),
            Grammar = grammar,
        };
    }

    /// <summary>
    /// A chat message as templates see it: role and content (a string; text parts of a content list
    /// joined), tool calls with their arguments as objects (OpenAI sends them as JSON text), tool results.
    /// </summary>
    private static object? Message(JsonElement m, string where)
    {
        if (m.ValueKind != JsonValueKind.Object)
            throw ApiError.BadRequest($"{where} must be an object", where);
        if (!m.TryGetProperty("role", out var role) || role.ValueKind != JsonValueKind.String)
            throw ApiError.BadRequest($"{where}.role must be a string", $"{where}.role");
        string r = role.GetString()!;
        if (r is not ("system" or "developer" or "user" or "assistant" or "tool"))
            throw ApiError.BadRequest($"{where}.role '{r}' must be system, developer, user, assistant or tool", $"{where}.role");
        var message = new OrderedDictionary<string, object?>(StringComparer.Ordinal) { ["role"] = r == "developer" ? "system" : r };
        if (m.TryGetProperty("content", out var content))
        {
            message["content"] = content.ValueKind switch
            {
                JsonValueKind.String => content.GetString(),
                JsonValueKind.Null => r == "assistant" ? "" : throw ApiError.BadRequest($"{where}.content must not be null", $"{where}.content"),
                JsonValueKind.Array => string.Concat(content.EnumerateArray().Select((part, k) =>
                    part.ValueKind == JsonValueKind.Object && part.TryGetProperty("type", out var type) && type.ValueKind == JsonValueKind.String && type.GetString() == "text"
                        && part.TryGetProperty("text", out var text) && text.ValueKind == JsonValueKind.String
                        ? text.GetString()
                        : throw ApiError.BadRequest($"{where}.content[{k}] must be a text part (images and audio are not supported)", $"{where}.content[{k}]"))),
                _ => throw ApiError.BadRequest($"{where}.content must be a string or a list of text parts", $"{where}.content"),
            };
        }
        else if (r != "assistant")
            throw ApiError.BadRequest($"{where}.content is required", $"{where}.content");
        else
            message["content"] = "";
        foreach (string key in new[] { "name", "tool_call_id", "reasoning_content" })
        {
            if (m.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null)
                message[key] = v.ValueKind == JsonValueKind.String ? v.GetString() : throw ApiError.BadRequest($"{where}.{key} must be a string", $"{where}.{key}");
        }
        if (m.TryGetProperty("tool_calls", out var calls) && calls.ValueKind != JsonValueKind.Null)
        {
            if (calls.ValueKind != JsonValueKind.Array)
                throw ApiError.BadRequest($"{where}.tool_calls must be an array", $"{where}.tool_calls");
            var list = new List<object?>();
            int k = 0;
            foreach (var call in calls.EnumerateArray())
            {
                string at = $"{where}.tool_calls[{k++}]";
                if (call.ValueKind != JsonValueKind.Object || !call.TryGetProperty("function", out var f) || f.ValueKind != JsonValueKind.Object
                    || !f.TryGetProperty("name", out var name) || name.ValueKind != JsonValueKind.String)
                    throw ApiError.BadRequest($"{at} must have a function with a name", at);
                object? arguments = "{}";
                if (f.TryGetProperty("arguments", out var a))
                {
                    arguments = a.ValueKind switch
                    {
                        JsonValueKind.String => ParseArguments(a.GetString()!, at),
                        JsonValueKind.Object => PyValue.FromJson(a),
                        _ => throw ApiError.BadRequest($"{at}.function.arguments must be a JSON string", $"{at}.function.arguments"),
                    };
                }
                list.Add(Engine.Chat.ChatTemplate.ToolCall(call.TryGetProperty("id", out var id) && id.ValueKind == JsonValueKind.String ? id.GetString() : $"call_{k}",
                    name.GetString()!, arguments));
            }
            message["tool_calls"] = list;
        }
        return message;
    }

    private static object? ParseArguments(string json, string at)
    {
        try
        {
            using var doc = JsonDocument.Parse(json);
            return PyValue.FromJson(doc.RootElement.Clone());
        }
        catch (JsonException)
        {
            throw ApiError.BadRequest($"{at}.function.arguments is not valid JSON", $"{at}.function.arguments");
        }
    }

    private static JsonElement? Get(JsonElement o, string name) =>
        o.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    private static bool Bool(JsonElement e, string name) => e.ValueKind switch
    {
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        _ => throw ApiError.BadRequest($"'{name}' must be true or false, not {Kind(e.ValueKind)}", name),
    };

    private static int? Int(JsonElement o, string name, int min, int max)
    {
        if (Get(o, name) is not { } e)
            return null;
        if (e.ValueKind != JsonValueKind.Number || !e.TryGetInt64(out long v))
            throw ApiError.BadRequest($"'{name}' must be an integer, not {Kind(e.ValueKind)}", name);
        if (v < min || v > max)
            throw ApiError.BadRequest($"'{name}' {v} must be {min}..{max}", name);
        return (int)v;
    }

    private static float? Float(JsonElement o, string name, float min, float max)
    {
        if (Get(o, name) is not { } e)
            return null;
        if (e.ValueKind != JsonValueKind.Number)
            throw ApiError.BadRequest($"'{name}' must be a number, not {Kind(e.ValueKind)}", name);
        double v = e.GetDouble();
        if (!(v >= min && v <= max))
            throw ApiError.BadRequest($"'{name}' {v} must be {min}..{max}", name);
        return (float)v;
    }

    private static string Kind(JsonValueKind k) => k switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.String => "a string",
        JsonValueKind.Number => "a number",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        _ => "null",
    };
}
