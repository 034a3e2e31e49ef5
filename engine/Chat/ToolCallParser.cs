using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace Engine.Chat;

/// <summary>A call the model asked for: a function name and its arguments as a JSON object text.</summary>
public sealed record ToolCall(string Name, string Arguments, string? Id = null);

/// <summary>An assistant turn split into its visible answer, its reasoning (if any) and its tool calls.</summary>
public sealed record AssistantReply(string Content, string? Reasoning, IReadOnlyList<ToolCall> ToolCalls);

/// <summary>How a model family writes tool calls in its output (each named after the families that use it).</summary>
public enum ToolCallFormat
{
    /// <summary>No tool-call syntax: the whole output is the answer.</summary>
    None,
    /// <summary><c>&lt;tool_call&gt;{"name": …, "arguments": …}&lt;/tool_call&gt;</c>: Hermes 2/3, Qwen2.5, Qwen3, QwQ.</summary>
    Hermes,
    /// <summary>A JSON object <c>{"name": …, "parameters": …}</c>, optionally after <c>&lt;|python_tag|&gt;</c>: Llama 3.1–3.3.</summary>
    Llama3,
    /// <summary><c>[TOOL_CALLS] [{"name": …, "arguments": …}, …]</c>: Mistral v3 (Nemo, 7B v0.3).</summary>
    MistralV3,
    /// <summary><c>[TOOL_CALLS]name[ARGS]{…}</c>, repeated: Mistral Small 3.2, Devstral.</summary>
    MistralV11,
    /// <summary><c>&lt;|START_ACTION|&gt;[{"tool_call_id": …, "tool_name": …, "parameters": …}]&lt;|END_ACTION|&gt;</c>: Command R7B.</summary>
    CommandR7B,
    /// <summary><c>&lt;|tool_call|&gt;[{"name": …, "arguments": …}]</c>: Granite 3.x, Phi-4-mini.</summary>
    Granite,
    /// <summary><c>&gt;&gt;&gt;name\n{…}</c>, repeated (<c>all</c> is the answer): Functionary v3.2.</summary>
    Functionary,
    /// <summary><c>&lt;｜tool▁call▁begin｜&gt;function&lt;｜tool▁sep｜&gt;name\n```json\n{…}\n```&lt;｜tool▁call▁end｜&gt;</c>: DeepSeek R1/V3.</summary>
    DeepSeek,
}

/// <summary>
/// Reads tool calls and reasoning out of a model's output, in its family's format (chosen from the chat
/// template's own markers, <see cref="Detect"/>): reasoning between <c>&lt;think&gt;</c> and
/// <c>&lt;/think&gt;</c> (or Command R7B's thinking markers; an output that only closes the block had it
/// opened by the prompt), tool calls in the family's syntax with their arguments as JSON objects, the
/// rest as the answer. Malformed calls are left in the answer rather than dropped.
/// </summary>
public static partial class ToolCallParser
{
    /// <summary>The format a chat template writes tool calls in, from the markers it uses.</summary>
    public static ToolCallFormat Detect(string templateSource) => templateSource switch
    {
        var t when t.Contains("<|START_ACTION|>", StringComparison.Ordinal) => ToolCallFormat.CommandR7B,
        var t when t.Contains("[TOOL_CALLS]", StringComparison.Ordinal) && t.Contains("[ARGS]", StringComparison.Ordinal) => ToolCallFormat.MistralV11,
        var t when t.Contains("[TOOL_CALLS]", StringComparison.Ordinal) => ToolCallFormat.MistralV3,
        var t when t.Contains("<tool_call>", StringComparison.Ordinal) => ToolCallFormat.Hermes,
        var t when t.Contains("<|tool_call|>", StringComparison.Ordinal) => ToolCallFormat.Granite,
        var t when t.Contains("tool\u2581call\u2581begin", StringComparison.Ordinal) => ToolCallFormat.DeepSeek,
        var t when t.Contains(">>>", StringComparison.Ordinal) => ToolCallFormat.Functionary,
        var t when t.Contains("<|python_tag|>", StringComparison.Ordinal) || (t.Contains("<|eot_id|>", StringComparison.Ordinal) && t.Contains("\"parameters\"", StringComparison.Ordinal))
            => ToolCallFormat.Llama3,
        _ => ToolCallFormat.None,
    };

    public static AssistantReply Parse(string output, ToolCallFormat format)
    {
        var (content, reasoning) = SplitReasoning(output);
        var calls = new List<ToolCall>();
        content = format switch
        {
            ToolCallFormat.Hermes => Extract(content, HermesCall(), m => Call(m.Groups[1].Value, "name", "arguments"), calls),
            ToolCallFormat.Llama3 => Llama3(content, calls),
            ToolCallFormat.MistralV3 => JsonArrayAfter(content, "[TOOL_CALLS]", "name", "arguments", calls),
            ToolCallFormat.MistralV11 => Extract(content, MistralV11Call(), m => new ToolCall(m.Groups[1].Value.Trim(), Json(m.Groups[2].Value) ?? ""), calls),
            ToolCallFormat.CommandR7B => Extract(content, CommandRAction(), m => null, calls, array: m => m.Groups[1].Value, "tool_name", "parameters", "tool_call_id"),
            ToolCallFormat.Granite => GraniteCalls(content, calls),
            ToolCallFormat.Functionary => Functionary(content, calls),
            ToolCallFormat.DeepSeek => Extract(content, DeepSeekCall(), m => new ToolCall(m.Groups[1].Value.Trim(), Json(m.Groups[2].Value) ?? ""), calls),
            _ => content,
        };
        calls.RemoveAll(c => c.Arguments.Length == 0);
        return new AssistantReply(Clean(content, format), reasoning, calls);
    }

    /// <summary>Reasoning out of the answer: &lt;think&gt;…&lt;/think&gt; (an unopened close means the prompt opened it) or Command R7B's markers.</summary>
    public static (string Content, string? Reasoning) SplitReasoning(string output)
    {
        foreach (var (open, close) in new[] { ("<think>", "</think>"), ("<|START_THINKING|>", "<|END_THINKING|>") })
        {
            int end = output.IndexOf(close, StringComparison.Ordinal);
            if (end < 0)
                continue;
            int start = output.IndexOf(open, StringComparison.Ordinal);
            int from = start >= 0 && start < end ? start + open.Length : 0;
            string reasoning = output[from..end].Trim();
            string content = (start >= 0 && start < end ? output[..start] : "") + output[(end + close.Length)..];
            return (content.Trim(), reasoning);
        }
        return (output, null);
    }

    private static string Clean(string content, ToolCallFormat format)
    {
        content = content.Trim();
        if (format == ToolCallFormat.CommandR7B)
            content = content.Replace("<|START_RESPONSE|>", "", StringComparison.Ordinal).Replace("<|END_RESPONSE|>", "", StringComparison.Ordinal).Trim();
        if (format == ToolCallFormat.DeepSeek)
            content = content.Replace("<\uFF5Ctool\u2581calls\u2581begin\uFF5C>", "", StringComparison.Ordinal)
                .Replace("<\uFF5Ctool\u2581calls\u2581end\uFF5C>", "", StringComparison.Ordinal).Trim();
        return content;
    }

    private static string Extract(string content, Regex pattern, Func<Match, ToolCall?> single, List<ToolCall> calls,
        Func<Match, string>? array = null, string nameKey = "name", string argumentsKey = "arguments", string? idKey = null)
    {
        var kept = new StringBuilder();
        int at = 0;
        foreach (Match m in pattern.Matches(content))
        {
            var found = new List<ToolCall>();
            if (array is not null)
                found.AddRange(FromArray(array(m), nameKey, argumentsKey, idKey) ?? []);
            else if (single(m) is { Arguments.Length: > 0 } call)
                found.Add(call);
            if (found.Count == 0)
                continue; // malformed: stays in the answer
            kept.Append(content, at, m.Index - at);
            at = m.Index + m.Length;
            calls.AddRange(found);
        }
        kept.Append(content, at, content.Length - at);
        return kept.ToString();
    }

    /// <summary>A call from a JSON object with the name and arguments under the given keys, or null.</summary>
    private static ToolCall? Call(string json, string nameKey, string argumentsKey, string? idKey = null)
    {
        try
        {
            using var doc = JsonDocument.Parse(json.Trim());
            return FromObject(doc.RootElement, nameKey, argumentsKey, idKey);
        }
        catch (JsonException)
        {
            return null;
        }
    }

    private static ToolCall? FromObject(JsonElement e, string nameKey, string argumentsKey, string? idKey)
    {
        if (e.ValueKind != JsonValueKind.Object || !e.TryGetProperty(nameKey, out var name) || name.ValueKind != JsonValueKind.String)
            return null;
        string arguments = e.TryGetProperty(argumentsKey, out var a) ? a.ValueKind == JsonValueKind.String ? Json(a.GetString()!) ?? "" : a.GetRawText() : "{}";
        string? id = idKey is not null && e.TryGetProperty(idKey, out var i) ? i.ToString() : e.TryGetProperty("id", out var i2) ? i2.ToString() : null;
        return new ToolCall(name.GetString()!, arguments, id);
    }

    private static List<ToolCall>? FromArray(string json, string nameKey, string argumentsKey, string? idKey)
    {
        try
        {
            using var doc = JsonDocument.Parse(json.Trim());
            if (doc.RootElement.ValueKind == JsonValueKind.Object)
                return FromObject(doc.RootElement, nameKey, argumentsKey, idKey) is { } one ? [one] : null;
            if (doc.RootElement.ValueKind != JsonValueKind.Array)
                return null;
            var calls = new List<ToolCall>();
            foreach (var e in doc.RootElement.EnumerateArray())
            {
                if (FromObject(e, nameKey, argumentsKey, idKey) is not { } call)
                    return null;
                calls.Add(call);
            }
            return calls;
        }
        catch (JsonException)
        {
            return null;
        }
    }

    /// <summary>The text as a JSON object (compact), or null if it is not one.</summary>
    private static string? Json(string text)
    {
        try
        {
            using var doc = JsonDocument.Parse(text.Trim());
            return doc.RootElement.ValueKind == JsonValueKind.Object ? doc.RootElement.GetRawText() : null;
        }
        catch (JsonException)
        {
            return null;
        }
    }

    private static string JsonArrayAfter(string content, string marker, string nameKey, string argumentsKey, List<ToolCall> calls)
    {
        int at = content.IndexOf(marker, StringComparison.Ordinal);
        if (at < 0)
            return content;
        string rest = content[(at + marker.Length)..];
        if (FromArray(rest, nameKey, argumentsKey, null) is not { } found)
            return content;
        calls.AddRange(found);
        return content[..at];
    }

    private static string GraniteCalls(string content, List<ToolCall> calls)
    {
        int at = content.IndexOf("<|tool_call|>", StringComparison.Ordinal);
        if (at < 0)
            return content;
        string rest = content[(at + "<|tool_call|>".Length)..];
        int close = rest.IndexOf("<|/tool_call|>", StringComparison.Ordinal); // Phi-4-mini closes the list
        if (close >= 0)
            rest = rest[..close];
        if (FromArray(rest, "name", "arguments", null) is not { } found)
            return content;
        calls.AddRange(found);
        return content[..at];
    }

    private static string Llama3(string content, List<ToolCall> calls)
    {
        string body = content.Trim();
        int tag = body.IndexOf("<|python_tag|>", StringComparison.Ordinal);
        string prefix = "";
        if (tag >= 0)
        {
            prefix = body[..tag];
            body = body[(tag + "<|python_tag|>".Length)..].Trim();
        }
        if (!body.StartsWith('{'))
            return content;
        // one call, or several separated by semicolons
        var found = new List<ToolCall>();
        foreach (string part in body.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (Call(part, "name", "parameters") is not { } call)
                return content;
            found.Add(call);
        }
        calls.AddRange(found);
        return prefix;
    }

    private static string Functionary(string content, List<ToolCall> calls)
    {
        var kept = new StringBuilder();
        foreach (var segment in content.Split(">>>"))
        {
            if (segment.Length == 0)
                continue;
            int newline = segment.IndexOf('\n');
            string name = newline < 0 ? segment.Trim() : segment[..newline].Trim();
            string body = newline < 0 ? "" : segment[(newline + 1)..];
            if (name == "all" || content.IndexOf(">>>", StringComparison.Ordinal) < 0)
                kept.Append(body);
            else if (Json(body) is { } args)
                calls.Add(new ToolCall(name, args));
            else
                kept.Append(">>>").Append(segment);
        }
        return content.Contains(">>>", StringComparison.Ordinal) ? kept.ToString() : content;
    }

    [GeneratedRegex(@"<tool_call>\s*(.*?)\s*</tool_call>", RegexOptions.Singleline)]
    private static partial Regex HermesCall();

    [GeneratedRegex(@"\[TOOL_CALLS\]([^\[]+?)\[ARGS\](\{.*?\})(?=\[TOOL_CALLS\]|</s>|$)", RegexOptions.Singleline)]
    private static partial Regex MistralV11Call();

    [GeneratedRegex(@"<\|START_ACTION\|>(.*?)<\|END_ACTION\|>", RegexOptions.Singleline)]
    private static partial Regex CommandRAction();

    [GeneratedRegex("<\uFF5Ctool\u2581call\u2581begin\uFF5C>function<\uFF5Ctool\u2581sep\uFF5C>([^\n]+)\n```json\n(.*?)\n```<\uFF5Ctool\u2581call\u2581end\uFF5C>", RegexOptions.Singleline)]
    private static partial Regex DeepSeekCall();
}
