namespace Engine.Chat;

/// <summary>
/// The streamed counterpart of <see cref="ToolCallParser.Parse"/>: as an answer arrives piece by piece,
/// says what may be shown now as answer text and what as reasoning, holding back only what could still
/// turn out to be something else — a tag that is not complete yet, the start of a tool call, whitespace
/// that may end the answer. Once a tool call starts, the rest waits for <see cref="Finish"/>, which parses
/// the whole answer; what was released is always the start of what <see cref="ToolCallParser.Parse"/>
/// returns, so a client that joins the deltas gets the non-streamed answer.
/// </summary>
public sealed class ChatStreamParser
{
    private static readonly (string Open, string Close)[] ThinkingTags = [("<think>", "</think>"), ("<|START_THINKING|>", "<|END_THINKING|>")];

    private readonly ToolCallFormat _format;
    private readonly string[] _markers;
    private readonly bool _holdAll, _jsonCalls, _startsInReasoning;
    private readonly System.Text.StringBuilder _all = new();
    private int _contentSent, _reasoningSent;

    /// <param name="format">The tool-call format, or <see cref="ToolCallFormat.None"/> when no tools were offered.</param>
    /// <param name="startsInReasoning">The prompt opened the thinking block (it ends with &lt;think&gt;): the answer starts as reasoning.</param>
    public ChatStreamParser(ToolCallFormat format, bool startsInReasoning = false)
    {
        _format = format;
        _startsInReasoning = startsInReasoning;
        _markers = format switch
        {
            ToolCallFormat.Hermes => ["<tool_call>"],
            ToolCallFormat.MistralV3 or ToolCallFormat.MistralV11 => ["[TOOL_CALLS]"],
            ToolCallFormat.Granite => ["<|tool_call|>"],
            ToolCallFormat.DeepSeek => ["<\uFF5Ctool\u2581calls\u2581begin\uFF5C>", "<\uFF5Ctool\u2581call\u2581begin\uFF5C>"],
            ToolCallFormat.Llama3 => ["<|python_tag|>"],
            _ => [],
        };
        // Command R7B wraps answers in response markers and Functionary routes text by recipient: both are parsed whole
        _holdAll = format is ToolCallFormat.CommandR7B or ToolCallFormat.Functionary;
        _jsonCalls = format == ToolCallFormat.Llama3; // a call is the whole answer as a JSON object
    }

    /// <summary>Adds a piece of the answer; returns the answer text and the reasoning that may be shown now.</summary>
    public (string Content, string Reasoning) Push(string piece)
    {
        _all.Append(piece);
        if (_holdAll)
            return ("", "");
        var (content, reasoning) = Views(_all.ToString(), final: false);
        return (Release(content, ref _contentSent), Release(reasoning, ref _reasoningSent));
    }

    /// <summary>The end of the answer: the parsed reply, and the text and reasoning not yet shown.</summary>
    public (AssistantReply Reply, string Content, string Reasoning) Finish()
    {
        var reply = ToolCallParser.Parse(_startsInReasoning && !HasOpenTag(_all.ToString()) ? "<think>" + _all : _all.ToString(), _format);
        string content = reply.Content.Length >= _contentSent ? reply.Content[_contentSent..] : "";
        string reasoning = (reply.Reasoning ?? "").Length >= _reasoningSent ? (reply.Reasoning ?? "")[_reasoningSent..] : "";
        _contentSent = reply.Content.Length;
        _reasoningSent = reply.Reasoning?.Length ?? 0;
        return (reply, content, reasoning);
    }

    private static bool HasOpenTag(string text) => ThinkingTags.Any(t => text.Contains(t.Open, StringComparison.Ordinal));

    /// <summary>
    /// The answer text and reasoning that are settled in <paramref name="text"/>: each trimmed as
    /// <see cref="ToolCallParser.Parse"/> trims, cut before anything still open (a partial tag, a tool call).
    /// </summary>
    private (string Content, string Reasoning) Views(string text, bool final)
    {
        string body = text;
        string reasoning = "";
        string start = text.TrimStart();
        foreach (var (open, close) in ThinkingTags)
        {
            bool opened = start.StartsWith(open, StringComparison.Ordinal) || _startsInReasoning;
            if (!opened)
            {
                if (open.StartsWith(start, StringComparison.Ordinal) && start.Length > 0)
                    return ("", ""); // "<thi": may open reasoning
                continue;
            }
            int from = start.StartsWith(open, StringComparison.Ordinal) ? text.IndexOf(open, StringComparison.Ordinal) + open.Length : 0;
            int end = text.IndexOf(close, from, StringComparison.Ordinal);
            if (end < 0)
            {
                // still thinking: everything but a tail that may begin the closing tag
                string inside = text[from..].TrimStart();
                return ("", HoldTail(inside, [close]).Trim());
            }
            reasoning = text[from..end].Trim();
            body = text[(end + close.Length)..];
            break;
        }
        string content = body.TrimStart();
        if (_jsonCalls && content.StartsWith('{'))
            return ("", reasoning); // maybe a call: wait for the whole answer
        int marker = -1;
        foreach (var m in _markers)
        {
            int at = content.IndexOf(m, StringComparison.Ordinal);
            if (at >= 0 && (marker < 0 || at < marker))
                marker = at;
        }
        content = marker >= 0 ? content[..marker] : HoldTail(content, _markers);
        return (content.TrimEnd(), reasoning);
    }

    /// <summary>Text without its longest tail that is the start of one of <paramref name="tags"/>.</summary>
    private static string HoldTail(string text, string[] tags)
    {
        int hold = 0;
        foreach (var tag in tags)
        {
            for (int k = Math.Min(tag.Length - 1, text.Length); k > hold; k--)
            {
                if (text.AsSpan(text.Length - k).SequenceEqual(tag.AsSpan(0, k)))
                {
                    hold = k;
                    break;
                }
            }
        }
        return text[..^hold];
    }

    /// <summary>What of <paramref name="settled"/> has not been sent yet (it only ever grows).</summary>
    private static string Release(string settled, ref int sent)
    {
        if (settled.Length <= sent)
            return "";
        string delta = settled[sent..];
        sent = settled.Length;
        return delta;
    }
}
