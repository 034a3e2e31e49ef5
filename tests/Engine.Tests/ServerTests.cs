using System.ClientModel;
using System.Net;
using System.Text;
using System.Text.Json;
using Engine.Api;
using Engine.Chat;
using Engine.Chat.Jinja;
using Engine.Server;
using Engine.Serving;
using OpenAI;
using OpenAI.Chat;

namespace Engine.Tests;

/// <summary>
/// <c>engine serve</c> through the official OpenAI .NET client (chat, streaming, tools, usage) and raw
/// HTTP (every error path: status code and OpenAI error object, never a stack trace), on loopback at a
/// free port. Also fuzzes the request reader and the template interpreter with seeded mutators.
/// </summary>
[NonParallelizable]
public class ServerTests
{
    private const string Key = "test-key";

    private static async Task<(OpenAiServer Server, LanguageModel Model, TempDir Dir)> Start(string template, SchedulerOptions? scheduler = null, int context = 256,
        int dim = 64, TextWriter? log = null)
    {
        var dir = new TempDir();
        var spec = new TinySpec("chat", Heads: 4, KvHeads: 2, Seed: 70, Context: context, Dim: dim, Ffn: dim * 3 / 2, Layers: dim > 64 ? 4 : 2);
        var lm = LanguageModel.Load(ChatTests.ModelWithTemplates(dir, spec, ("tokenizer.chat_template", template)), new ModelOptions { Threads = 1, ContextLength = context });
        var server = await OpenAiServer.StartAsync(lm, lm.GetChatTemplate(), new ServerOptions
        {
            Port = 0, ApiKey = Key, ModelName = "tiny", Scheduler = scheduler ?? new SchedulerOptions { Parallel = 4 }, AccessLog = log,
        });
        Assert.That(server.Address.Host, Is.EqualTo("127.0.0.1"));
        return (server, lm, dir);
    }

    private static ChatClient Client(OpenAiServer server) =>
        new("tiny", new ApiKeyCredential(Key), new OpenAIClientOptions { Endpoint = new Uri(server.Address, "/v1"), NetworkTimeout = TimeSpan.FromSeconds(60) });

    [Test]
    public async Task The_OpenAI_client_chats_streams_and_counts_usage()
    {
        var (server, lm, dir) = await Start(ChatTests.ChatMl);
        await using var _ = server;
        using var __ = lm;
        using var ___ = dir;
        var client = Client(server);
        ChatMessage[] messages = [new SystemChatMessage("Be brief."), new UserChatMessage("Hello")];
        var options = new ChatCompletionOptions { MaxOutputTokenCount = 12, Temperature = 0 };

        ChatCompletion whole = await client.CompleteChatAsync(messages, options);
        // what the same conversation gives in-process
        using var chat = new ChatSession(lm, lm.GetChatTemplate()!, "Be brief.");
        string local = string.Concat(chat.Ask("Hello", new GenerationOptions { MaxTokens = 12, Sampling = Sampling.SamplingOptions.Greedy }));
        Assert.That(whole.Content.Count == 0 ? "" : whole.Content[0].Text, Is.EqualTo(local));
        Assert.That(whole.Role, Is.EqualTo(ChatMessageRole.Assistant));
        string rendered = lm.GetChatTemplate()!.Render([ChatTemplate.Message("system", "Be brief."), ChatTemplate.Message("user", "Hello")]);
        Assert.That(whole.Usage.InputTokenCount, Is.EqualTo(lm.Tokenizer.Encode(rendered, addSpecial: false, parseSpecial: true).Count));
        Assert.That(whole.Usage.OutputTokenCount, Is.LessThanOrEqualTo(12));
        Assert.That(whole.FinishReason, Is.EqualTo(whole.Usage.OutputTokenCount == 12 ? ChatFinishReason.Length : ChatFinishReason.Stop));

        var streamed = new StringBuilder();
        ChatFinishReason? finish = null;
        await foreach (var update in client.CompleteChatStreamingAsync(messages, options))
        {
            foreach (var part in update.ContentUpdate)
                streamed.Append(part.Text);
            finish ??= update.FinishReason;
        }
        Assert.That(streamed.ToString(), Is.EqualTo(local), "streaming gives the same text, piece by piece");
        Assert.That(finish, Is.EqualTo(whole.FinishReason));
        // the second request found the prompt's whole blocks cached (the template's prompt is short: none may be whole)
        Assert.That(server.Scheduler.Metrics().Requests, Is.EqualTo(2));
    }

    [Test]
    public async Task Tools_and_tool_results_reach_the_template()
    {
        var (server, lm, dir) = await Start(ChatTests.TemplateFile("Qwen-Qwen2.5-7B-Instruct.jinja"), context: 2048);
        await using var _ = server;
        using var __ = lm;
        using var ___ = dir;
        var client = Client(server);
        var tool = ChatTool.CreateFunctionTool("get_weather", "Weather in a city",
            BinaryData.FromString("""{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"""));
        ChatMessage[] conversation =
        [
            new UserChatMessage("Weather in Paris?"),
            new AssistantChatMessage([ChatToolCall.CreateFunctionToolCall("call_1", "get_weather", BinaryData.FromString("""{"city":"Paris"}"""))]),
            new ToolChatMessage("call_1", "sunny, 21 C"),
        ];
        var plain = await client.CompleteChatAsync(conversation, new ChatCompletionOptions { MaxOutputTokenCount = 2, Temperature = 0 });
        var options = new ChatCompletionOptions { MaxOutputTokenCount = 2, Temperature = 0 };
        options.Tools.Add(tool);
        var withTools = await client.CompleteChatAsync(conversation, options);
        // the prompt the server built: the template's own render of the same conversation
        var messages = (List<object?>)PyValue.FromJson(JsonDocument.Parse("""
            [{"role":"user","content":"Weather in Paris?"},
             {"role":"assistant","content":"","tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":{"city":"Paris"}}}]},
             {"role":"tool","content":"sunny, 21 C","tool_call_id":"call_1"}]
            """).RootElement)!;
        string rendered = lm.GetChatTemplate()!.Render(messages);
        Assert.That(rendered, Does.Contain("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"));
        Assert.That(plain.Value.Usage.InputTokenCount, Is.EqualTo(lm.Tokenizer.Encode(rendered, addSpecial: false, parseSpecial: true).Count));
        Assert.That(withTools.Value.Usage.InputTokenCount, Is.GreaterThan(plain.Value.Usage.InputTokenCount + 20), "the tool's signature is in the prompt");
    }

    /// <summary>
    /// OpenAI's logit_bias and penalties and llama.cpp's sampler fields reach the chain: banning the greedy
    /// first token changes the completion to the in-process greedy completion under the same bias; values
    /// out of range are 400s naming the field.
    /// </summary>
    [Test]
    public async Task Logit_bias_and_penalties_reach_the_sampler()
    {
        var (server, lm, dir) = await Start(ChatTests.ChatMl);
        await using var _ = server;
        using var __ = lm;
        using var ___ = dir;
        var ids = lm.Tokenizer.Encode("Once upon", addSpecial: true).ToArray();
        int first = SpeculativeTests.Plain(lm, ids, 1)[0];
        var options = new GenerationOptions
        {
            MaxTokens = 4, StopAtEndOfGeneration = false,
            Sampling = Sampling.SamplingOptions.Greedy with
            {
                LogitBias = new Dictionary<int, float> { [first] = -100f }, PresencePenalty = 0.5f, FrequencyPenalty = 0.25f, RepeatLastN = 64,
            },
        };
        using var session = lm.CreateSession();
        string expected = lm.Tokenizer.Decode(session.Generate(ids, options).ToList());
        var (status, body) = await Post(server, "/v1/completions",
            $$"""{"prompt":"Once upon","max_tokens":4,"ignore_eos":true,"temperature":0,"logit_bias":{"{{first}}":-100},"presence_penalty":0.5,"frequency_penalty":0.25}""");
        Assert.That(status, Is.EqualTo(HttpStatusCode.OK), body.ToString());
        Assert.That(body.GetProperty("choices")[0].GetProperty("text").GetString(), Is.EqualTo(expected));
        var (plainStatus, plain) = await Post(server, "/v1/completions", """{"prompt":"Once upon","max_tokens":4,"ignore_eos":true,"temperature":0}""");
        Assert.That(plain.GetProperty("choices")[0].GetProperty("text").GetString(), Is.Not.EqualTo(expected), "the bias changed the completion");
        foreach (var (field, value) in new[] { ("presence_penalty", "3"), ("logit_bias", "{\"x\":1}"), ("typical_p", "0"), ("mirostat", "3") })
        {
            var (bad, error) = await Post(server, "/v1/completions", $$"""{"prompt":"Once","max_tokens":1,"{{field}}":{{value}}}""");
            Assert.That(bad, Is.EqualTo(HttpStatusCode.BadRequest), field);
            Assert.That(error.GetProperty("error").GetProperty("param").GetString(), Is.EqualTo(field));
        }
    }

    /// <summary>OpenAI's response_format (json_schema, json_object) and llama.cpp's grammar field constrain what comes back.</summary>
    [Test]
    public async Task Response_formats_and_grammars_constrain_the_reply()
    {
        var (server, lm, dir) = await Start(ChatTests.ChatMl);
        await using var _ = server;
        using var __ = lm;
        using var ___ = dir;
        const string schema = """{"type":"object","properties":{"name":{"type":"string","maxLength":8},"age":{"type":"integer","minimum":1,"maximum":99},"pets":{"type":"array","items":{"enum":["cat","dog"]},"maxItems":2}},"required":["name","age","pets"]}""";
        for (int seed = 1; seed <= 3; seed++)
        {
            var (status, body) = await Post(server, "/v1/completions",
                """{"prompt":"Once upon a time","max_tokens":100,"temperature":1,"seed":""" + seed + ""","response_format":{"type":"json_schema","json_schema":{"name":"p","schema":""" + schema + "}}}");
            Assert.That(status, Is.EqualTo(HttpStatusCode.OK), body.ToString());
            var choice = body.GetProperty("choices")[0];
            string text = choice.GetProperty("text").GetString()!;
            Assert.That(choice.GetProperty("finish_reason").GetString(), Is.EqualTo("stop"), text);
            Assert.That(Json.Schema.JsonSchema.FromText(schema).Evaluate(JsonDocument.Parse(text).RootElement).IsValid, Is.True, text);
        }
        var (ok, grammarBody) = await Post(server, "/v1/completions", """{"prompt":"Was Lily happy?","max_tokens":10,"grammar":"root ::= \" Yes.\" | \" No.\""}""");
        Assert.That(ok, Is.EqualTo(HttpStatusCode.OK));
        Assert.That(grammarBody.GetProperty("choices")[0].GetProperty("text").GetString(), Is.AnyOf(" Yes.", " No."));
    }

    private static async Task<(HttpStatusCode Status, JsonElement Body)> Post(OpenAiServer server, string path, string body, string? key = Key)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(60) };
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(server.Address, path)) { Content = new StringContent(body, Encoding.UTF8, "application/json") };
        if (key is not null)
            request.Headers.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", key);
        using var response = await http.SendAsync(request);
        string text = await response.Content.ReadAsStringAsync();
        return (response.StatusCode, JsonDocument.Parse(text).RootElement.Clone());
    }

    public static IEnumerable<TestCaseData> BadRequests()
    {
        const string ok = "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]";
        yield return new TestCaseData("{not json", 400, null, "not valid JSON").SetName("serve: malformed JSON is a 400");
        yield return new TestCaseData("[1,2]", 400, null, "JSON object").SetName("serve: a body that is not an object is a 400");
        yield return new TestCaseData("""{"messages":"hi"}""", 400, "messages", "non-empty array").SetName("serve: messages of the wrong type");
        yield return new TestCaseData("""{"messages":[{"role":"wizard","content":"x"}]}""", 400, "messages[0].role", "wizard").SetName("serve: an unknown role");
        yield return new TestCaseData("{" + ok + ""","max_tokens":"ten"}""", 400, "max_tokens", "integer").SetName("serve: max_tokens of the wrong type");
        yield return new TestCaseData("{" + ok + ""","max_tokens":100000}""", 400, "max_tokens", "context").SetName("serve: max_tokens beyond the context");
        yield return new TestCaseData("{" + ok + ""","temperature":7}""", 400, "temperature", "0..2").SetName("serve: temperature out of range");
        yield return new TestCaseData("{" + ok + ""","model":"gpt-nope"}""", 404, "model", "gpt-nope").SetName("serve: an unknown model is a 404");
        yield return new TestCaseData("{" + ok + ""","response_format":{"type":"xml"}}""", 400, "response_format", "text, json_object or json_schema").SetName("serve: an unknown response_format");
        yield return new TestCaseData("{" + ok + ""","response_format":{"type":"json_schema","json_schema":{"schema":{"not":{}}}}}""", 400, "response_format", "'not'").SetName("serve: a schema a grammar cannot express");
        yield return new TestCaseData("{" + ok + ""","grammar":"root ::= foo"}""", 400, "response_format", "never defined").SetName("serve: a grammar that does not parse");
        yield return new TestCaseData("{" + ok + ""","stop":[1]}""", 400, "stop", "strings").SetName("serve: stop of the wrong type");
        yield return new TestCaseData("""{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}""", 400, "messages[0].content[0]", "text part")
            .SetName("serve: an image part is refused");
    }

    [TestCaseSource(nameof(BadRequests))]
    public async Task Bad_requests_get_OpenAI_error_objects(string body, int status, string? param, string message)
    {
        var (server, lm, dir) = await Start(ChatTests.ChatMl);
        await using var _ = server;
        using var __ = lm;
        using var ___ = dir;
        var (code, json) = await Post(server, "/v1/chat/completions", body);
        Assert.That((int)code, Is.EqualTo(status));
        var error = json.GetProperty("error");
        Assert.That(error.GetProperty("message").GetString(), Does.Contain(message));
        Assert.That(error.GetProperty("type").GetString(), Is.EqualTo("invalid_request_error"));
        Assert.That(error.GetProperty("param").ValueKind == JsonValueKind.Null ? null : error.GetProperty("param").GetString(), Is.EqualTo(param));
    }

    [Test]
    public async Task A_conversation_the_template_refuses_is_a_400_naming_the_template_line()
    {
        var (server, lm, dir) = await Start(ChatTests.TemplateFile("meta-llama-Llama-2-7b-chat-hf.jinja"));
        await using var _ = server;
        using var __ = lm;
        using var ___ = dir;
        var (status, body) = await Post(server, "/v1/chat/completions",
            """{"messages":[{"role":"user","content":"a"},{"role":"user","content":"b"}],"max_tokens":2}""");
        Assert.That(status, Is.EqualTo(HttpStatusCode.BadRequest));
        Assert.That(body.GetProperty("error").GetProperty("message").GetString(),
            Does.Contain("line 1").And.Contain("Conversation roles must alternate"));
    }

    [Test]
    public async Task Keys_routes_models_health_and_metrics()
    {
        var log = new StringWriter();
        var (server, lm, dir) = await Start(ChatTests.ChatMl, log: log);
        await using var _ = server;
        using var __ = lm;
        using var ___ = dir;
        string body = """{"messages":[{"role":"user","content":"hi"}],"max_tokens":2}""";
        var (missing, m) = await Post(server, "/v1/chat/completions", body, key: null);
        Assert.That((missing, m.GetProperty("error").GetProperty("code").GetString()), Is.EqualTo((HttpStatusCode.Unauthorized, "invalid_api_key")));
        Assert.That((await Post(server, "/v1/chat/completions", body, key: "wrong")).Status, Is.EqualTo(HttpStatusCode.Unauthorized));
        Assert.That((await Post(server, "/v1/nothing", "{}")).Status, Is.EqualTo(HttpStatusCode.NotFound));
        var (okStatus, completion) = await Post(server, "/v1/completions", """{"prompt":"Once upon","max_tokens":3,"logprobs":2,"ignore_eos":true}""");
        Assert.That(okStatus, Is.EqualTo(HttpStatusCode.OK));
        var choice = completion.GetProperty("choices")[0];
        Assert.That(choice.GetProperty("logprobs").GetProperty("token_logprobs").GetArrayLength(), Is.EqualTo(3));
        Assert.That(completion.GetProperty("usage").GetProperty("completion_tokens").GetInt32(), Is.EqualTo(3));
        // the same prompt as token ids gives the same greedy text
        var ids = lm.Tokenizer.Encode("Once upon", addSpecial: true);
        var (idsStatus, byIds) = await Post(server, "/v1/completions", $$"""{"prompt":[{{string.Join(",", ids)}}],"max_tokens":3,"ignore_eos":true,"temperature":0}""");
        var (_, byText) = await Post(server, "/v1/completions", """{"prompt":"Once upon","max_tokens":3,"ignore_eos":true,"temperature":0}""");
        Assert.That(idsStatus, Is.EqualTo(HttpStatusCode.OK));
        Assert.That(byIds.GetProperty("choices")[0].GetProperty("text").GetString(), Is.EqualTo(byText.GetProperty("choices")[0].GetProperty("text").GetString()));
        Assert.That(byIds.GetProperty("usage").GetProperty("prompt_tokens").GetInt32(), Is.EqualTo(ids.Count));
        var (badId, badIdBody) = await Post(server, "/v1/completions", $$"""{"prompt":[1,{{lm.Config.VocabSize}}],"max_tokens":1}""");
        Assert.That((badId, badIdBody.GetProperty("error").GetProperty("param").GetString()), Is.EqualTo((HttpStatusCode.BadRequest, "prompt")));

        using var http = new HttpClient();
        http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", Key);
        using var models = JsonDocument.Parse(await http.GetStringAsync(new Uri(server.Address, "/v1/models")));
        Assert.That(models.RootElement.GetProperty("data")[0].GetProperty("id").GetString(), Is.EqualTo("tiny"));
        Assert.That(await http.GetStringAsync(new Uri(server.Address, "/health")), Does.Contain("ok"));
        string metrics = await http.GetStringAsync(new Uri(server.Address, "/metrics"));
        Assert.That(metrics, Does.Contain("engine_generation_tokens_total").And.Contain("engine_requests_waiting 0").And.Contain("engine_kv_cache_usage_ratio"));
        double Counter(string name) => double.Parse(metrics.Split('\n').Single(l => l.StartsWith(name + " ", StringComparison.Ordinal))[(name.Length + 1)..],
            System.Globalization.CultureInfo.InvariantCulture);
        double step = Counter("engine_step_seconds_total"), forward = Counter("engine_forward_seconds_total");
        Assert.That(forward, Is.GreaterThan(0), "the completions above ran forward passes");
        Assert.That(step, Is.GreaterThanOrEqualTo(forward), "a step's time holds its forward pass's");
        string access = log.ToString();
        Assert.That(access, Does.Contain("POST /v1/chat/completions 401"));
        Assert.That(access, Does.Contain("POST /v1/completions 200").And.Contain("completion=3"), "one line per request, with its tokens");
    }

    [Test]
    public async Task Streams_are_well_formed_a_full_server_refuses_and_a_disconnect_frees_the_sequence()
    {
        var (server, lm, dir) = await Start(ChatTests.ChatMl, new SchedulerOptions { Parallel = 1, MaxQueue = 0, PrefixCaching = false }, context: 4096,
            dim: 384); // wide enough that 4,000 tokens take seconds: the disconnect comes long before the end
        await using var _ = server;
        using var __ = lm;
        using var ___ = dir;
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(60) };
        http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", Key);
        var request = new HttpRequestMessage(HttpMethod.Post, new Uri(server.Address, "/v1/chat/completions"))
        {
            Content = new StringContent("""{"messages":[{"role":"user","content":"hi"}],"max_tokens":4000,"ignore_eos":true,"stream":true}""", Encoding.UTF8, "application/json"),
        };
        var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        Assert.That(response.Content.Headers.ContentType!.MediaType, Is.EqualTo("text/event-stream"));
        var stream = new StreamReader(await response.Content.ReadAsStreamAsync());
        string first = (await stream.ReadLineAsync())!;
        Assert.That(first, Does.StartWith("data: {"));
        using (var chunk = JsonDocument.Parse(first["data: ".Length..]))
            Assert.That(chunk.RootElement.GetProperty("choices")[0].GetProperty("delta").GetProperty("role").GetString(), Is.EqualTo("assistant"));

        // the one place is taken and nothing may wait: 429
        var (busy, error) = await Post(server, "/v1/chat/completions", """{"messages":[{"role":"user","content":"hi"}],"max_tokens":2}""");
        Assert.That((busy, error.GetProperty("error").GetProperty("type").GetString()), Is.EqualTo((HttpStatusCode.TooManyRequests, "rate_limit_exceeded")));

        // the client goes away mid-stream: its sequence is freed
        response.Dispose();
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (server.Scheduler.Metrics().Active > 0 && DateTime.UtcNow < deadline)
            await Task.Delay(20);
        Assert.That(server.Scheduler.Metrics().Active, Is.Zero, "the disconnected request left");
        Assert.That(server.Scheduler.Metrics().Cancelled, Is.EqualTo(1), "it was cancelled, not finished");
        Assert.That(server.Scheduler.Metrics().GeneratedTokens, Is.LessThan(4000), "it stopped when the client left");

        // a whole stream: every event is a JSON chunk, the last says why it ended, then usage and [DONE]
        var (events, done) = await ReadStream(http, server, """{"messages":[{"role":"user","content":"hi"}],"max_tokens":6,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}""");
        Assert.That(done);
        Assert.That(events[^2].GetProperty("choices")[0].GetProperty("finish_reason").GetString(), Is.EqualTo("length"));
        Assert.That(events[^1].GetProperty("usage").GetProperty("completion_tokens").GetInt32(), Is.EqualTo(6));
        Assert.That(events.All(e => e.GetProperty("object").GetString() == "chat.completion.chunk"));
    }

    internal static async Task<(List<JsonElement> Events, bool Done)> ReadStream(HttpClient http, OpenAiServer server, string body)
    {
        using var response = await http.PostAsync(new Uri(server.Address, "/v1/chat/completions"), new StringContent(body, Encoding.UTF8, "application/json"));
        string text = await response.Content.ReadAsStringAsync();
        var events = new List<JsonElement>();
        bool done = false;
        foreach (string block in text.Split("\n\n", StringSplitOptions.RemoveEmptyEntries))
        {
            Assert.That(block, Does.StartWith("data: "), "every event is a data line");
            Assert.That(done, Is.False, "nothing after [DONE]");
            string data = block["data: ".Length..];
            if (data == "[DONE]")
                done = true;
            else
                events.Add(JsonDocument.Parse(data).RootElement.Clone());
        }
        return (events, done);
    }

    /// <summary>
    /// Seeded mutations of valid request bodies (bytes flipped, inserted, cut; values swapped for other
    /// JSON types): the reader either accepts a body or answers with a 400 — never another exception.
    /// </summary>
    [Test]
    public void The_request_reader_survives_thousands_of_mutated_bodies()
    {
        string[] seeds =
        [
            """{"model":"tiny","messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"hi"}]}],"max_tokens":5,"temperature":0.5,"top_p":0.9,"stop":["a","b"],"n":2,"seed":3,"stream":true,"stream_options":{"include_usage":true}}""",
            """{"messages":[{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{\"x\":1}"}}]},{"role":"tool","tool_call_id":"c","content":"r"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],"tool_choice":"auto","logprobs":true,"top_logprobs":3}""",
        ];
        string[] values = ["null", "1", "-1", "1e308", "\"x\"", "[]", "{}", "true", "[[[[[]]]]]", "\"\\ud800\"", "99999999999999999999"];
        var rng = new Random(2026);
        int accepted = 0, refused = 0;
        for (int i = 0; i < 4000; i++)
        {
            var body = Encoding.UTF8.GetBytes(seeds[i % seeds.Length]).ToList();
            int edits = 1 + rng.Next(4);
            for (int e = 0; e < edits; e++)
            {
                int at = rng.Next(body.Count);
                switch (rng.Next(4))
                {
                    case 0: body[at] = (byte)rng.Next(256); break;
                    case 1: body.Insert(at, (byte)"{}[]\",:0a\\"[rng.Next(10)]); break;
                    case 2: body.RemoveRange(at, Math.Min(rng.Next(1, 8), body.Count - at)); break;
                    default:
                        // a value after some ':' replaced by another kind of value
                        int colon = body.IndexOf((byte)':', at);
                        if (colon < 0)
                            break;
                        int end = colon + 1;
                        while (end < body.Count && body[end] is not ((byte)',' or (byte)'}'))
                            end++;
                        body.RemoveRange(colon + 1, end - colon - 1);
                        body.InsertRange(colon + 1, Encoding.UTF8.GetBytes(values[rng.Next(values.Length)]));
                        break;
                }
            }
            try
            {
                using var doc = RequestReader.Parse(body.ToArray());
                _ = RequestReader.Chat(doc.RootElement);
                accepted++;
            }
            catch (ApiError e)
            {
                Assert.That(e.Status, Is.EqualTo(400), e.Message);
                refused++;
            }
        }
        Assert.That(refused, Is.GreaterThan(1000), "most mutations break the body");
        Assert.That(accepted, Is.GreaterThan(10), "some mutations leave a valid request");
    }

    /// <summary>
    /// Seeded mutations of the real chat templates (characters cut, doubled, swapped for template
    /// syntax): each either renders or fails with a <see cref="JinjaException"/> naming a line, within the
    /// interpreter's step and output bounds — no other exception, no hang.
    /// </summary>
    [Test]
    public void The_template_interpreter_survives_thousands_of_mutated_templates()
    {
        string folder = Path.Combine(AppContext.BaseDirectory, "ChatTemplates");
        var sources = Directory.GetFiles(folder, "*.jinja").Order(StringComparer.Ordinal).Select(File.ReadAllText).ToArray();
        using var conversations = JsonDocument.Parse(File.ReadAllText(Path.Combine(folder, "conversations.json")));
        var variables = conversations.RootElement.GetProperty("tools").EnumerateObject().ToDictionary(p => p.Name, p => PyValue.FromJson(p.Value));
        string[] syntax = ["{{", "}}", "{%", "%}", "{#", "#}", "(", ")", "[", "]", "'", "\"", "|", ".", "-", "+", "*", " if ", " for ", " in ", " endfor ", " endif ", "~", "%"];
        var rng = new Random(16);
        int rendered = 0, refused = 0;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        for (int i = 0; i < 3000; i++)
        {
            var s = new StringBuilder(sources[i % sources.Length]);
            int edits = 1 + rng.Next(3);
            for (int e = 0; e < edits && s.Length > 0; e++)
            {
                int at = rng.Next(s.Length);
                switch (rng.Next(3))
                {
                    case 0: s.Remove(at, Math.Min(rng.Next(1, 12), s.Length - at)); break;
                    case 1: s.Insert(at, syntax[rng.Next(syntax.Length)]); break;
                    default:
                        int len = Math.Min(rng.Next(1, 40), s.Length - at);
                        s.Insert(at, s.ToString(at, len));
                        break;
                }
            }
            try
            {
                _ = JinjaTemplate.Parse(s.ToString()).Render(variables, new DateTime(2026, 11, 30));
                rendered++;
            }
            catch (JinjaException e)
            {
                Assert.That(e.Message, Does.StartWith("line "));
                refused++;
            }
        }
        Assert.That(refused, Is.GreaterThan(300));
        Assert.That(rendered, Is.GreaterThan(300));
        TestContext.Out.WriteLine($"{rendered} rendered, {refused} refused in {clock.Elapsed.TotalSeconds:F1} s");
    }
}
