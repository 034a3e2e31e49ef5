using Engine.Chat;

namespace Engine.Tests;

/// <summary>
/// Tool calls and reasoning read out of model output, per family format: the format is recognized from
/// the real chat templates, each family's own syntax gives the call's name and JSON arguments, the text
/// around stays the answer, and a malformed call is left in the answer rather than lost.
/// </summary>
public class ToolCallParserTests
{
    private static string Template(string name) => File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "ChatTemplates", name));

    [TestCase("Qwen-Qwen2.5-7B-Instruct.jinja", ToolCallFormat.Hermes)]
    [TestCase("Qwen-Qwen3-0.6B.jinja", ToolCallFormat.Hermes)]
    [TestCase("NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja", ToolCallFormat.Hermes)]
    [TestCase("meta-llama-Llama-3.1-8B-Instruct.jinja", ToolCallFormat.Llama3)]
    [TestCase("meta-llama-Llama-3.2-3B-Instruct.jinja", ToolCallFormat.Llama3)]
    [TestCase("mistralai-Mistral-Nemo-Instruct-2407.jinja", ToolCallFormat.MistralV3)]
    [TestCase("Mistral-Small-3.2-24B-Instruct-2506.jinja", ToolCallFormat.MistralV11)]
    [TestCase("CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja", ToolCallFormat.CommandR7B)]
    [TestCase("ibm-granite-granite-3.3-2B-Instruct.jinja", ToolCallFormat.Granite)]
    [TestCase("meetkai-functionary-medium-v3.2.jinja", ToolCallFormat.Functionary)]
    [TestCase("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", ToolCallFormat.DeepSeek)]
    [TestCase("google-gemma-2-2b-it.jinja", ToolCallFormat.None)]
    public void The_format_is_recognized_from_the_template(string template, ToolCallFormat format) =>
        Assert.That(ToolCallParser.Detect(Template(template)), Is.EqualTo(format));

    public static IEnumerable<TestCaseData> Outputs()
    {
        TestCaseData Case(ToolCallFormat f, string output, string content, string? reasoning, params string[] calls) =>
            new TestCaseData(f, output, content, reasoning, calls).SetName($"{f}: {output.Replace("\n", "\\n")[..Math.Min(50, output.Length)]}");
        yield return Case(ToolCallFormat.Hermes, "<think>\nNeed the weather.\n</think>\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"location\": \"Paris\"}}\n</tool_call>",
            "", "Need the weather.", "get_weather {\"location\": \"Paris\"}");
        yield return Case(ToolCallFormat.Hermes, "Two calls:<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call><tool_call>{\"name\": \"b\", \"arguments\": {\"x\": 1}}</tool_call>",
            "Two calls:", null, "a {}", "b {\"x\": 1}");
        yield return Case(ToolCallFormat.Hermes, "<tool_call>{not json}</tool_call>", "<tool_call>{not json}</tool_call>", null);
        yield return Case(ToolCallFormat.Llama3, "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"location\": \"Paris\"}}",
            "", null, "get_weather {\"location\": \"Paris\"}");
        yield return Case(ToolCallFormat.Llama3, "{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"parameters\": {\"q\": \"x\"}}", "", null, "a {}", "b {\"q\": \"x\"}");
        yield return Case(ToolCallFormat.Llama3, "Paris is sunny.", "Paris is sunny.", null);
        yield return Case(ToolCallFormat.MistralV3, "[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"location\": \"Paris\"}, \"id\": \"abc123456\"}]",
            "", null, "get_weather {\"location\": \"Paris\"} abc123456");
        yield return Case(ToolCallFormat.MistralV11, "[TOOL_CALLS]get_weather[ARGS]{\"location\": \"Paris\"}[TOOL_CALLS]get_time[ARGS]{}", "", null,
            "get_weather {\"location\": \"Paris\"}", "get_time {}");
        yield return Case(ToolCallFormat.CommandR7B,
            "<|START_THINKING|>I will look it up.<|END_THINKING|><|START_ACTION|>[{\"tool_call_id\": \"0\", \"tool_name\": \"get_weather\", \"parameters\": {\"location\": \"Paris\"}}]<|END_ACTION|>",
            "", "I will look it up.", "get_weather {\"location\": \"Paris\"} 0");
        yield return Case(ToolCallFormat.CommandR7B, "<|START_RESPONSE|>Hello!<|END_RESPONSE|>", "Hello!", null);
        yield return Case(ToolCallFormat.Granite, "<|tool_call|>[{\"name\": \"get_weather\", \"arguments\": {\"location\": \"Paris\"}}]", "", null, "get_weather {\"location\": \"Paris\"}");
        yield return Case(ToolCallFormat.Granite, "<|tool_call|>[{\"name\": \"f\", \"arguments\": {}}]<|/tool_call|>", "", null, "f {}");
        yield return Case(ToolCallFormat.Functionary, ">>>all\nLet me check.>>>get_weather\n{\"location\": \"Paris\"}", "Let me check.", null, "get_weather {\"location\": \"Paris\"}");
        yield return Case(ToolCallFormat.DeepSeek,
            "Okay, the user wants weather.\n</think>\n\n<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"location\": \"Paris\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
            "", "Okay, the user wants weather.", "get_weather {\"location\": \"Paris\"}");
        yield return Case(ToolCallFormat.None, "<think>hmm</think>Just text.", "Just text.", "hmm");
    }

    [TestCaseSource(nameof(Outputs))]
    public void Calls_and_reasoning_come_out_of_the_text(ToolCallFormat format, string output, string content, string? reasoning, string[] calls)
    {
        var reply = ToolCallParser.Parse(output, format);
        Assert.That(reply.Content, Is.EqualTo(content));
        Assert.That(reply.Reasoning, Is.EqualTo(reasoning));
        Assert.That(reply.ToolCalls.Select(c => (c.Name + " " + System.Text.Json.JsonSerializer.Serialize(System.Text.Json.JsonDocument.Parse(c.Arguments).RootElement)
            .Replace(":", ": ").Replace(",", ", ") + (c.Id is null ? "" : " " + c.Id)).Trim()), Is.EqualTo(calls));
    }

    /// <summary>
    /// The same outputs streamed in pieces (one character at a time, and seeded random cuts): the
    /// released deltas join to exactly what the whole-answer parse gives, no delta ever shows part of a
    /// tool call, and the calls come out at the end.
    /// </summary>
    [TestCaseSource(nameof(Outputs))]
    public void Streamed_in_pieces_the_deltas_join_to_the_parsed_reply(ToolCallFormat format, string output, string content, string? reasoning, string[] calls)
    {
        bool opened = !output.Contains("<think>", StringComparison.Ordinal) && output.Contains("</think>", StringComparison.Ordinal);
        var rng = new Random(output.Length);
        foreach (int cut in new[] { 1, 0, 0, 0 })
        {
            var parser = new ChatStreamParser(format, startsInReasoning: opened);
            var shown = new System.Text.StringBuilder();
            var thought = new System.Text.StringBuilder();
            for (int at = 0; at < output.Length;)
            {
                int n = Math.Min(output.Length - at, cut > 0 ? cut : rng.Next(1, 9));
                var (c, r) = parser.Push(output.Substring(at, n));
                shown.Append(c);
                thought.Append(r);
                at += n;
            }
            foreach (var marker in new[] { "<tool_call>", "[TOOL_CALLS]", "<|tool_call|>", "<|python_tag|>", "tool\u2581call", "</think>", "<think>" })
                Assert.That(shown.ToString(), Does.Not.Contain(marker), "no tag or call is shown as text");
            var (reply, restContent, restReasoning) = parser.Finish();
            Assert.That(shown + restContent, Is.EqualTo(content));
            Assert.That(thought + restReasoning, Is.EqualTo(reasoning ?? ""));
            Assert.That(reply.ToolCalls.Count, Is.EqualTo(calls.Length));
            Assert.That(reply.Content, Is.EqualTo(content));
        }
    }

    [Test]
    public void Streamed_text_is_released_as_soon_as_it_cannot_be_a_call()
    {
        var parser = new ChatStreamParser(ToolCallFormat.Hermes);
        Assert.That(parser.Push("Paris is"), Is.EqualTo(("Paris is", "")));
        Assert.That(parser.Push(" sunny <tool"), Is.EqualTo((" sunny", "")), "the space waits for what follows; '<tool' may start a call");
        Assert.That(parser.Push("s> today."), Is.EqualTo((" <tools> today.", "")));
        var thinking = new ChatStreamParser(ToolCallFormat.None);
        Assert.That(thinking.Push("<thi"), Is.EqualTo(("", "")));
        Assert.That(thinking.Push("nk>Let me see</th"), Is.EqualTo(("", "Let me see")));
        Assert.That(thinking.Push("ink>\n\nYes."), Is.EqualTo(("Yes.", "")));
        Assert.That(thinking.Finish().Reply.Reasoning, Is.EqualTo("Let me see"));
    }
}
