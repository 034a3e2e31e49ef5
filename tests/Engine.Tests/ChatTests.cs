using System.Text.Json;
using Engine.Api;
using Engine.Chat;
using Engine.Chat.Jinja;
using Engine.Formats.Gguf;

namespace Engine.Tests;

/// <summary>Chat templates from model files, conversations over the KV cache, and <c>engine chat</c>.</summary>
public class ChatTests
{
    internal const string ChatMl = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
        + "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    private static string Folder => Path.Combine(AppContext.BaseDirectory, "ChatTemplates");

    internal static string TemplateFile(string name) => File.ReadAllText(Path.Combine(Folder, name));

    /// <summary>A tiny random model as GGUF with the given chat templates in its metadata.</summary>
    internal static string ModelWithTemplates(TempDir dir, params (string Key, string Template)[] templates) => ModelWithTemplates(dir, 256, templates);

    internal static string ModelWithTemplates(TempDir dir, int context, params (string Key, string Template)[] templates) =>
        ModelWithTemplates(dir, new TinySpec("chat", Heads: 4, KvHeads: 2, Seed: 70, Context: context), templates);

    internal static string ModelWithTemplates(TempDir dir, TinySpec spec, params (string Key, string Template)[] templates)
    {
        string plain = TinyModel.Random(spec).WriteGguf(dir.File("plain.gguf"));
        return ModelParityTests.WithKeys(plain, dir.File("chat.gguf"), [.. templates.Select(t => (t.Key, GgufValue.From(t.Template)))]);
    }

    private static IReadOnlyList<object?> Conversation(string name)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(Folder, "conversations.json")));
        return (IReadOnlyList<object?>)PyValue.FromJson(doc.RootElement.GetProperty(name).GetProperty("messages"))!;
    }

    private static string Expected(string template, string conversation)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(Folder, "expected.json")));
        return doc.RootElement.GetProperty(template).GetProperty(conversation).GetProperty("text").GetString()!;
    }

    /// <summary>GGUF tokenizer.chat_template and a named alternate (tokenizer.chat_template.tool_use), rendered as Python renders them.</summary>
    [Test]
    public void Gguf_templates_load_by_name_and_render()
    {
        using var dir = new TempDir();
        string path = ModelWithTemplates(dir, ("tokenizer.chat_template", TemplateFile("Qwen-Qwen2.5-7B-Instruct.jinja")),
            ("tokenizer.chat_template.tool_use", TemplateFile("NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja")));
        using var lm = LanguageModel.Load(path, new ModelOptions { Threads = 1 });
        var chat = lm.GetChatTemplate()!;
        Assert.That(chat.Render(Conversation("chat")), Is.EqualTo(Expected("Qwen-Qwen2.5-7B-Instruct.jinja", "chat")));
        var tools = lm.GetChatTemplate("tool_use")!;
        Assert.That(tools.Name, Is.EqualTo("tool_use"));
        var e = Assert.Throws<Engine.Formats.ModelFormatException>(() => lm.GetChatTemplate("rag"))!;
        Assert.That(e.Message, Does.Contain("tokenizer.chat_template.rag").And.Contain("default, tool_use"));
    }

    /// <summary>An HF folder: tokenizer_config.json's chat_template as a list of named templates; a broken one is refused by name and line.</summary>
    [Test]
    public void Hf_folder_templates_load_from_tokenizer_config()
    {
        using var dir = new TempDir();
        string folder = TinyModel.Random(new TinySpec("chat-hf", Heads: 4, KvHeads: 2, Seed: 71)).WriteHfFolder(dir.File("hf"));
        File.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), JsonSerializer.Serialize(new
        {
            chat_template = new[] { new { name = "default", template = ChatMl }, new { name = "broken", template = "line 1\n{% if %}" } },
        }));
        using var lm = LanguageModel.Load(folder, new ModelOptions { Threads = 1 });
        Assert.That(lm.GetChatTemplate()!.Render([ChatTemplate.Message("user", "hi")]), Is.EqualTo("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"));
        var e = Assert.Throws<Engine.Formats.ModelFormatException>(() => lm.GetChatTemplate("broken"))!;
        Assert.That(e.Message, Does.Contain("chat_template['broken']").And.Contain("line 2"));
    }

    /// <summary>
    /// Two turns over one KV cache: the second prefills only what its rendering adds after the longest
    /// prefix the cache holds (at least the whole first prompt), and the answer it streams is what plain
    /// greedy decoding of the same full prompt gives.
    /// </summary>
    [Test]
    public void A_conversation_prefills_only_the_new_turn()
    {
        using var dir = new TempDir();
        using var lm = LanguageModel.Load(ModelWithTemplates(dir, ("tokenizer.chat_template", ChatMl)), new ModelOptions { Threads = 1 });
        var options = new GenerationOptions { MaxTokens = 12, Sampling = Sampling.SamplingOptions.Greedy, StopAtEndOfGeneration = false };
        using var chat = new ChatSession(lm, lm.GetChatTemplate()!, "Be brief.");
        string first = string.Concat(chat.Ask("Hello", options));
        int firstPrefill = chat.LastPrefill;
        string second = string.Concat(chat.Ask("And then?", options));
        string full = lm.GetChatTemplate()!.Render(chat.Messages.Take(4).ToList());
        Assert.That(chat.Messages.Select(m => ((OrderedDictionary<string, object?>)m!)["role"]), Is.EqualTo(new[] { "system", "user", "assistant", "user", "assistant" }));
        Assert.That(((OrderedDictionary<string, object?>)chat.Messages[2]!)["content"], Is.EqualTo(first.Trim()));
        Assert.That((chat.ToolCallFormat, chat.LastReply!.ToolCalls.Count), Is.EqualTo((ToolCallFormat.None, 0)));
        int fullTokens = lm.Tokenizer.Encode(full, addSpecial: false, parseSpecial: true).Count;
        // at least the first prompt came from the cache (this random model's answer need not re-tokenize to the ids it was generated as)
        Assert.That(firstPrefill, Is.EqualTo(lm.Tokenizer.Encode(lm.GetChatTemplate()!.Render(chat.Messages.Take(2).ToList()), addSpecial: false, parseSpecial: true).Count));
        Assert.That(chat.LastPrefill, Is.LessThanOrEqualTo(fullTokens - firstPrefill), "the history came from the cache");

        // the same prompt decoded from scratch gives the same answer
        using var fresh = lm.CreateSession();
        var ids = fresh.Generate(lm.Tokenizer.Encode(full, addSpecial: false, parseSpecial: true), options).ToList();
        Assert.That(second, Is.EqualTo(lm.Tokenizer.Decode(ids)));
    }

    [Test]
    public void Engine_chat_constrains_every_reply_to_a_grammar()
    {
        using var dir = new TempDir();
        string path = ModelWithTemplates(dir, ("tokenizer.chat_template", ChatMl));
        string saved = dir.File("conversation.json");
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = Engine.Cli.EngineCli.Run(["chat", "-m", path, "-n", "12", "--temp", "0.9", "--seed", "4", "-t", "1", "--grammar", "root ::= \"yes\" | \"no\""], stdout, stderr,
            new StringReader($"Is it?\nAnd now?\n/save {saved}\n/exit\n"));
        Assert.That(code, Is.Zero, stderr.ToString());
        using var doc = JsonDocument.Parse(File.ReadAllText(saved));
        var replies = doc.RootElement.EnumerateArray().Where(m => m.GetProperty("role").GetString() == "assistant").Select(m => m.GetProperty("content").GetString()).ToList();
        Assert.That(replies, Has.Count.EqualTo(2));
        Assert.That(replies, Has.All.Matches<string>(r => r is "yes" or "no"), string.Join(" | ", replies));
    }

    [Test]
    public void Engine_chat_talks_resets_saves_and_exits()
    {
        using var dir = new TempDir();
        string path = ModelWithTemplates(dir, ("tokenizer.chat_template", ChatMl));
        string saved = dir.File("conversation.json");
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = Engine.Cli.EngineCli.Run(["chat", "-m", path, "--system", "Be brief.", "-n", "8", "--temp", "0", "-t", "1"], stdout, stderr,
            new StringReader($"Hello\n/save {saved}\n/reset\nBye\n/exit\n"));
        Assert.That(code, Is.Zero, stderr.ToString());
        Assert.That(stdout.ToString(), Does.Contain("(saved 3 messages").And.Contain("(conversation reset)"));
        Assert.That(stderr.ToString(), Does.Contain("chat template").Or.Contain("default template"));
        using var doc = JsonDocument.Parse(File.ReadAllText(saved));
        Assert.That(doc.RootElement.EnumerateArray().Select(m => m.GetProperty("role").GetString()), Is.EqualTo(new[] { "system", "user", "assistant" }));

        var (missing, _, err) = CliTests.Run("chat", "-m", TinyModel.Random(new TinySpec("no-template", Seed: 72)).WriteGguf(dir.File("plain.gguf")));
        Assert.That(missing, Is.EqualTo(1));
        Assert.That(err, Does.Contain("has no chat template"));
    }
}
