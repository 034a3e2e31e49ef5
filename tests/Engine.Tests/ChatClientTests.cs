using System.Text.Json;
using Engine.Api;
using Engine.Chat;
using Engine.Sampling;
using Json.Schema;
using Microsoft.Extensions.AI;

namespace Engine.Tests;

/// <summary>
/// <see cref="ModelChatClient"/> used through Microsoft.Extensions.AI's <see cref="IChatClient"/> only: answers
/// equal plain greedy decoding of the rendered prompt, streaming joins to the same answer, follow-ups reuse
/// the KV cache exactly, options map (JSON schema, stop strings, tools), refusals name what is refused.
/// </summary>
public class ChatClientTests
{
    private static readonly ChatOptions Greedy = new() { Temperature = 0, MaxOutputTokens = 24 };

    private static (LanguageModel Model, IChatClient Client) Stories()
    {
        var model = LanguageModel.Load(SharedData.StoriesGguf, new ModelOptions { Threads = 1 });
        return (model, new ModelChatClient(model, new ChatTemplate(ChatTests.ChatMl)));
    }

    /// <summary>The reference: the same messages rendered by the template, decoded greedily by a plain session.</summary>
    private static string Reference(LanguageModel model, IReadOnlyList<(string Role, string Text)> messages, int maxTokens)
    {
        var template = new ChatTemplate(ChatTests.ChatMl);
        string prompt = template.Render([.. messages.Select(m => (object?)ChatTemplate.Message(m.Role, m.Text))], addGenerationPrompt: true);
        using var session = model.CreateSession();
        var ids = session.Generate(model.Tokenizer.Encode(prompt, addSpecial: false, parseSpecial: true),
            new GenerationOptions { MaxTokens = maxTokens, Sampling = new SamplingOptions { Temperature = 0 } }).ToList();
        return model.Tokenizer.Decode(ids);
    }

    [Test]
    public async Task A_greedy_answer_equals_plain_decoding_streamed_or_not_with_usage_and_finish_reason()
    {
        var (model, client) = Stories();
        using (model)
        using (client)
        {
            List<ChatMessage> messages = [new(ChatRole.System, "You tell short stories."), new(ChatRole.User, "Once upon a time")];
            string expected = Reference(model, [("system", "You tell short stories."), ("user", "Once upon a time")], 24);
            var response = await client.GetResponseAsync(messages, Greedy);
            Assert.That(response.Text, Is.EqualTo(expected));
            Assert.That(response.FinishReason, Is.EqualTo(ChatFinishReason.Length));
            Assert.That(response.Usage!.OutputTokenCount, Is.EqualTo(24));
            Assert.That(response.Usage.InputTokenCount, Is.GreaterThan(10));
            Assert.That(response.Messages.Single().Role, Is.EqualTo(ChatRole.Assistant));

            var updates = new List<ChatResponseUpdate>();
            await foreach (var update in client.GetStreamingResponseAsync(messages, Greedy))
                updates.Add(update);
            Assert.That(updates.Count, Is.GreaterThan(2), "streamed piece by piece");
            Assert.That(string.Concat(updates.Select(u => u.Text)), Is.EqualTo(expected));
            Assert.That(updates[^1].FinishReason, Is.EqualTo(ChatFinishReason.Length));
            Assert.That(updates[^1].Contents.OfType<UsageContent>().Single().Details.CachedInputTokenCount, Is.EqualTo(response.Usage.InputTokenCount - 1),
                "the same prompt again: all but its last token came from the cache");
            Assert.That(client.GetService<ChatClientMetadata>()!.ProviderName, Is.EqualTo("engine"));
        }
    }

    [Test]
    public async Task A_follow_up_reuses_the_cached_conversation_and_answers_as_a_fresh_client_does()
    {
        var (model, client) = Stories();
        using (model)
        using (client)
        {
            List<ChatMessage> history = [new(ChatRole.User, "Lily had a red ball.")];
            var first = await client.GetResponseAsync(history, Greedy);
            history.AddRange(first.Messages);
            history.Add(new ChatMessage(ChatRole.User, "Then the dog came."));
            var second = await client.GetResponseAsync(history, Greedy);
            Assert.That(second.Usage!.CachedInputTokenCount, Is.GreaterThan(first.Usage!.InputTokenCount!.Value / 2), "the first turn was not prefilled again");
            using var fresh = new ModelChatClient(model, new ChatTemplate(ChatTests.ChatMl));
            var again = await fresh.GetResponseAsync(history, Greedy);
            Assert.That(again.Usage!.CachedInputTokenCount, Is.Zero);
            Assert.That(second.Text, Is.EqualTo(again.Text), "answers from a reused cache equal a fresh prefill's");
        }
    }

    [Test]
    public async Task Json_schema_responses_validate_and_stop_strings_cut_the_answer()
    {
        var (model, client) = Stories();
        using (model)
        using (client)
        {
            string schema = """{"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer", "minimum": 1, "maximum": 9}}, "required": ["name", "age"], "additionalProperties": false}""";
            using var doc = JsonDocument.Parse(schema);
            var json = await client.GetResponseAsync([new(ChatRole.User, "Tell me about the cat.")],
                new ChatOptions { Temperature = 0.8f, Seed = 7, MaxOutputTokens = 80, ResponseFormat = ChatResponseFormat.ForJsonSchema(doc.RootElement.Clone(), "cat") });
            Assert.That(JsonSchema.FromText(schema).Evaluate(JsonDocument.Parse(json.Text).RootElement).IsValid, Is.True, json.Text);
            Assert.That(json.FinishReason, Is.EqualTo(ChatFinishReason.Stop));

            string plain = (await client.GetResponseAsync([new(ChatRole.User, "Once upon a time")], Greedy)).Text;
            string cut = plain.Length > 12 ? plain.Substring(6, 4) : throw new InconclusiveException("answer too short");
            var stopped = await client.GetResponseAsync([new(ChatRole.User, "Once upon a time")], new ChatOptions { Temperature = 0, MaxOutputTokens = 24, StopSequences = [cut] });
            Assert.That(stopped.Text, Is.EqualTo(plain[..plain.IndexOf(cut, StringComparison.Ordinal)]));
            Assert.That(stopped.FinishReason, Is.EqualTo(ChatFinishReason.Stop));
        }
    }

    /// <summary>
    /// Tools reach the template, a tool call in the family's syntax (Hermes, Qwen2.5's template) comes back as a
    /// <see cref="FunctionCallContent"/> with its arguments, and the result goes back into the conversation.
    /// The model is random, so a grammar (AdditionalProperties "grammar") makes it write the call.
    /// </summary>
    [Test]
    public async Task Tool_calls_come_back_as_function_calls_and_their_results_go_into_the_prompt()
    {
        using var dir = new TempDir();
        string path = ChatTests.ModelWithTemplates(dir, 2048, ("tokenizer.chat_template", ChatTests.TemplateFile("Qwen-Qwen2.5-7B-Instruct.jinja")));
        using var model = LanguageModel.Load(path, new ModelOptions { Threads = 1 });
        using IChatClient client = new ModelChatClient(model);
        var weather = AIFunctionFactory.Create((string city) => $"Sunny in {city}", "get_weather", "The weather in a city");
        string call = "<tool_call>\\n{\\\"name\\\": \\\"get_weather\\\", \\\"arguments\\\": {\\\"city\\\": \\\"Paris\\\"}}\\n</tool_call>";
        var options = new ChatOptions
        {
            Tools = [weather],
            MaxOutputTokens = 200,
            Temperature = 0,
            AdditionalProperties = new AdditionalPropertiesDictionary { ["grammar"] = $"root ::= \"{call}\"" },
        };
        List<ChatMessage> history = [new(ChatRole.User, "Weather in Paris?")];
        var response = await client.GetResponseAsync(history, options);
        var function = response.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>().Single();
        Assert.That(function.Name, Is.EqualTo("get_weather"));
        Assert.That(function.Arguments!["city"]?.ToString(), Is.EqualTo("Paris"));
        Assert.That(response.FinishReason, Is.EqualTo(ChatFinishReason.ToolCalls));
        Assert.That(response.Text, Is.Empty, "the call is not left in the text");
        var without = await client.GetResponseAsync(history, new ChatOptions { MaxOutputTokens = 1 });
        Assert.That(response.Usage!.InputTokenCount, Is.GreaterThan(without.Usage!.InputTokenCount!.Value + 20), "the tool's description is in the prompt");

        history.AddRange(response.Messages);
        history.Add(new ChatMessage(ChatRole.Tool, [new FunctionResultContent(function.CallId, "Sunny in Paris")]));
        var after = await client.GetResponseAsync(history, new ChatOptions { Tools = [weather], MaxOutputTokens = 4 });
        Assert.That(after.Usage!.InputTokenCount, Is.GreaterThan(response.Usage.InputTokenCount!.Value), "the call and its result are in the prompt");
        Assert.That(after.Usage.CachedInputTokenCount, Is.GreaterThan(0));
    }

    [Test]
    public async Task What_the_engine_cannot_do_is_refused_by_name_and_a_cancelled_stream_leaves_the_client_usable()
    {
        var (model, client) = Stories();
        using (model)
        using (client)
        {
            ChatMessage[] hello = [new(ChatRole.User, "Hello")];
            var tool = AIFunctionFactory.Create(() => 1, "one");
            await Assert.ThrowsAsync<NotSupportedException>(() => client.GetResponseAsync(hello, new ChatOptions { Tools = [tool], ToolMode = ChatToolMode.RequireAny }));
            var image = new ChatMessage(ChatRole.User, [new DataContent(new byte[] { 1, 2, 3 }, "image/png")]);
            Assert.That((await Assert.ThrowsAsync<NotSupportedException>(() => client.GetResponseAsync([image])))!.Message, Does.Contain("DataContent"));
            Assert.That((await Assert.CatchAsync<ArgumentException>(() => client.GetResponseAsync(hello, new ChatOptions { Temperature = -1 })))!.Message, Does.Contain("-1"));
            Assert.That((await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync(hello,
                new ChatOptions { AdditionalProperties = new AdditionalPropertiesDictionary { ["min_p"] = "lots" } })))!.Message, Does.Contain("min_p"));
            Assert.That(Assert.Throws<InvalidOperationException>(() => _ = new ModelChatClient(model))!.Message, Does.Contain("no chat template"));

            using var cts = new CancellationTokenSource();
            int seen = 0;
            await Assert.CatchAsync<OperationCanceledException>(async () =>
            {
                await foreach (var update in client.GetStreamingResponseAsync(hello, new ChatOptions { Temperature = 0, MaxOutputTokens = 200 }, cts.Token))
                {
                    seen++;
                    cts.Cancel();
                }
            });
            Assert.That(seen, Is.EqualTo(1));
            string expected = Reference(model, [("user", "Hello")], 24);
            Assert.That((await client.GetResponseAsync(hello, Greedy)).Text, Is.EqualTo(expected), "the client answers after a cancelled stream");
        }
    }
}

/// <summary>
/// <see cref="ModelEmbeddingGenerator"/> through <see cref="IEmbeddingGenerator{TInput, TEmbedding}"/>: the
/// mean of the tokens' last hidden states, checked against one whole-text pass of the network (the
/// generator runs passes of 32 tokens; the hidden states must not depend on the split).
/// </summary>
public class EmbeddingGeneratorTests
{
    [Test]
    public async Task Embeddings_are_mean_pooled_hidden_states_of_unit_length()
    {
        using var model = LanguageModel.Load(SharedData.StoriesGguf, new ModelOptions { Threads = 1 });
        using IEmbeddingGenerator<string, Embedding<float>> generator = new ModelEmbeddingGenerator(model);
        string longText = string.Concat(Enumerable.Repeat("Lily and Tom went to the park to play with a big red ball. ", 4));
        var embeddings = await generator.GenerateAsync(["Once upon a time", longText, "Once upon a time"]);
        Assert.That(embeddings, Has.Count.EqualTo(3));
        Assert.That(embeddings[0].Vector.Length, Is.EqualTo(model.Config.Dim));
        Assert.That(embeddings[0].Vector.ToArray(), Is.EqualTo(embeddings[2].Vector.ToArray()), "deterministic");
        int longTokens = model.Tokenizer.Encode(longText).Count;
        Assert.That(longTokens, Is.GreaterThan(64), "spans several passes");
        Assert.That(embeddings.Usage!.InputTokenCount, Is.EqualTo(2 * model.Tokenizer.Encode("Once upon a time").Count + longTokens));

        // the reference: one pass over the whole text, hidden states averaged and scaled to unit length
        var ids = model.Tokenizer.Encode(longText).ToArray();
        var network = model.Network;
        int dim = model.Config.Dim;
        using var cache = network.CreateKvCache(model.ContextLength, 32, sequences: 1, poolTokens: ids.Length + 64 + network.MaxBatch);
        using var sequence = cache.CreateSequence();
        var hidden = new float[ids.Length * dim];
        network.Forward(sequence, ids, [.. Enumerable.Range(0, ids.Length)], Engine.Backends.AttentionMask.Causal, [.. Enumerable.Range(0, ids.Length)],
            new float[ids.Length * model.Config.VocabSize], hidden);
        var mean = Enumerable.Range(0, dim).Select(j => Enumerable.Range(0, ids.Length).Average(i => (double)hidden[i * dim + j])).ToArray();
        double norm = Math.Sqrt(mean.Sum(x => x * x));
        var vector = embeddings[1].Vector.ToArray();
        // tolerance: the generator's 32-token passes and the one whole pass differ only in float summation order inside the kernels
        for (int j = 0; j < dim; j++)
            Assert.That(vector[j], Is.EqualTo(mean[j] / norm).Within(1e-4), $"component {j}");
        Assert.That(Math.Sqrt(vector.Sum(x => (double)x * x)), Is.EqualTo(1).Within(1e-5));
        await Assert.ThrowsAsync<NotSupportedException>(() => generator.GenerateAsync(["x"], new EmbeddingGenerationOptions { Dimensions = 7 }));
        Assert.That(generator.GetService<EmbeddingGeneratorMetadata>()!.DefaultModelDimensions, Is.EqualTo(model.Config.Dim));
    }
}
