using System.Text.Json;
using Engine.Formats;
using Engine.Formats.Safetensors;
using Engine.Models;
using Engine.Tensors;

namespace Engine.Tests;

public class SafetensorsTests
{
    [Test]
    public unsafe void Tensors_read_back_with_shapes_and_data()
    {
        using var dir = new TempDir();
        Safetensors.Write(dir.File("m.safetensors"), [("a", [1f, 2, 3, 4, 5, 6], [2, 3]), ("b", [7f], [1])]);
        using var f = SafetensorsFile.Open(dir.File("m.safetensors"));
        var a = f.Tensors["a"];
        Assert.Multiple(() =>
        {
            Assert.That(a.Shape, Is.EqualTo(new long[] { 2, 3 }));
            Assert.That(a.Type, Is.EqualTo(GgmlType.F32));
            Assert.That(new ReadOnlySpan<float>(f.Data(a), 6).ToArray(), Is.EqualTo(new[] { 1f, 2, 3, 4, 5, 6 }));
            Assert.That(new ReadOnlySpan<float>(f.Data(f.Tensors["b"]), 1)[0], Is.EqualTo(7f));
        });
    }

    [Test]
    public void Hf_names_map_to_gguf_names()
    {
        Assert.Multiple(() =>
        {
            Assert.That(SafetensorsWeightSource.GgufName("model.layers.12.self_attn.q_proj.weight"), Is.EqualTo("blk.12.attn_q.weight"));
            Assert.That(SafetensorsWeightSource.GgufName("model.layers.0.self_attn.k_proj.bias"), Is.EqualTo("blk.0.attn_k.bias"));
            Assert.That(SafetensorsWeightSource.GgufName("model.layers.3.mlp.down_proj.weight"), Is.EqualTo("blk.3.ffn_down.weight"));
            Assert.That(SafetensorsWeightSource.GgufName("model.layers.3.post_attention_layernorm.weight"), Is.EqualTo("blk.3.ffn_norm.weight"));
            Assert.That(SafetensorsWeightSource.GgufName("lm_head.weight"), Is.EqualTo("output.weight"));
            Assert.That(SafetensorsWeightSource.GgufName("model.layers.0.self_attn.rotary_emb.inv_freq"), Is.Null);
        });
    }

    private static string Open(string header, byte[] data, long? declared = null)
    {
        using var dir = new TempDir();
        string path = dir.File("bad.safetensors");
        Safetensors.WriteRaw(path, header, data, declared);
        var e = Assert.Throws<ModelFormatException>(() => SafetensorsFile.Open(path).Dispose())!;
        Assert.That(e.Message, Does.StartWith("bad.safetensors: "));
        return e.Message;
    }

    private static string T(string dtype, string shape, long begin, long end) =>
        "{\"w\": {\"dtype\": \"" + dtype + "\", \"shape\": " + shape + ", \"data_offsets\": [" + begin + ", " + end + "]}}";

    public static IEnumerable<TestCaseData> BadFiles()
    {
        var data16 = new byte[16];
        TestCaseData Case(string name, string header, byte[] data, string[] mentions, long? declared = null) =>
            new TestCaseData(header, data, mentions, declared).SetName(name);
        yield return Case("header longer than file", "{}", data16, ["header length", "truncated"], declared: 1 << 20);
        yield return Case("header beyond the format limit", "{}", data16, ["header length", "100000000"], declared: 200_000_000);
        yield return Case("not JSON", "{\"w\": [", data16, ["header", "not valid JSON"]);
        yield return Case("not an object", "[1, 2]", data16, ["header", "JSON object"]);
        yield return Case("unknown dtype", T("F12", "[4]", 0, 16), data16, ["'w' dtype", "F12"]);
        yield return Case("negative dimension", T("F32", "[-4]", 0, 16), data16, ["'w' shape", "-4"]);
        yield return Case("size does not match offsets", T("F32", "[3]", 0, 16), data16, ["'w'", "12 bytes", "16"]);
        yield return Case("offsets past the data", T("F32", "[8]", 0, 32), data16, ["'w' data_offsets", "truncated"]);
        yield return Case("offsets reversed", T("F32", "[0]", 8, 4), data16, ["'w' data_offsets", "not a valid range"]);
        yield return Case("shape overflows", T("F32", "[4611686018427387904, 4611686018427387904]", 0, 16), data16, ["'w' shape", "overflows"]);
        yield return Case("missing offsets", """{"w": {"dtype": "F32", "shape": [4]}}""", data16, ["'w' data_offsets", "missing"]);
        yield return Case("overlap", """{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}""", data16, ["'b'", "overlaps"]);
    }

    [TestCaseSource(nameof(BadFiles))]
    public void Bad_file_gives_a_clear_error(string header, byte[] data, string[] mentions, long? declared)
    {
        string message = Open(header, data, declared);
        foreach (string m in mentions)
            Assert.That(message, Does.Contain(m));
    }

    [Test]
    public void Every_truncation_of_a_valid_file_is_a_format_error()
    {
        using var dir = new TempDir();
        Safetensors.Write(dir.File("ok.safetensors"), [("a", new float[8], [2, 4])]);
        var bytes = File.ReadAllBytes(dir.File("ok.safetensors"));
        for (int length = 0; length < bytes.Length; length++)
        {
            File.WriteAllBytes(dir.File("t.safetensors"), bytes[..length]);
            Assert.Throws<ModelFormatException>(() => SafetensorsFile.Open(dir.File("t.safetensors")).Dispose(), $"length {length}");
        }
    }

    [Test]
    public void Shard_index_cannot_point_outside_the_folder()
    {
        using var dir = new TempDir();
        Safetensors.Write(dir.File("model-1.safetensors"), [("model.norm.weight", new float[4], [4])]);
        File.WriteAllText(dir.File("model.safetensors.index.json"),
            JsonSerializer.Serialize(new { weight_map = new Dictionary<string, string> { ["model.norm.weight"] = "../../etc/passwd" } }));
        var e = Assert.Throws<ModelFormatException>(() => new SafetensorsWeightSource(dir.Path).Dispose())!;
        Assert.That(e.Message, Does.Contain("weight_map['model.norm.weight']").And.Contain("not a file name"));

        File.WriteAllText(dir.File("model.safetensors.index.json"),
            JsonSerializer.Serialize(new { weight_map = new Dictionary<string, string> { ["model.norm.weight"] = "model-2.safetensors" } }));
        e = Assert.Throws<ModelFormatException>(() => new SafetensorsWeightSource(dir.Path).Dispose())!;
        Assert.That(e.Message, Does.Contain("model-2.safetensors").And.Contain("missing"));
    }

    [Test]
    public void A_weight_in_an_unsupported_dtype_is_named_when_used()
    {
        using var dir = new TempDir();
        Safetensors.WriteRaw(dir.File("model.safetensors"),
            """{"model.norm.weight": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}}""", new byte[16]);
        using var source = new SafetensorsWeightSource(dir.Path);
        var e = Assert.Throws<ModelFormatException>(() => source.Find("output_norm.weight"))!;
        Assert.That(e.Message, Does.Contain("model.norm.weight").And.Contain("I64"));
    }
}

public class ModelLoadErrorTests
{
    [Test]
    public void A_missing_tensor_and_a_wrong_shape_are_named()
    {
        using var dir = new TempDir();
        var model = TinyModel.Random(new TinySpec("err", Layers: 1));
        string folder = model.WriteHfFolder(dir.File("hf"));
        // Claim a wider FFN than the tensors have.
        string config = File.ReadAllText(Path.Combine(folder, "config.json")).Replace("\"intermediate_size\":96", "\"intermediate_size\":128", StringComparison.Ordinal);
        File.WriteAllText(Path.Combine(folder, "config.json"), config);
        var e = Assert.Throws<ModelFormatException>(() => Api.LanguageModel.Load(folder).Dispose())!;
        Assert.That(e.Message, Does.Contain("blk.0.ffn_gate.weight").And.Contain("[64, 96]").And.Contain("[64, 128]"));

        config = config.Replace("\"intermediate_size\":128", "\"intermediate_size\":96", StringComparison.Ordinal).Replace("\"num_hidden_layers\":1", "\"num_hidden_layers\":2", StringComparison.Ordinal);
        File.WriteAllText(Path.Combine(folder, "config.json"), config);
        e = Assert.Throws<ModelFormatException>(() => Api.LanguageModel.Load(folder).Dispose())!;
        Assert.That(e.Message, Does.Contain("blk.1.attn_norm.weight").And.Contain("missing"));
    }

    [TestCase("\"num_attention_heads\":4", "\"num_attention_heads\":3", "num_key_value_heads")]
    [TestCase("\"num_attention_heads\":4", "\"num_attention_heads\":0", "num_attention_heads")]
    [TestCase("\"rms_norm_eps\":1E-05", "\"rms_norm_eps\":-1", "rms_norm_eps")]
    [TestCase("\"LlamaForCausalLM\"", "\"GPTNeoXForCausalLM\"", "GPTNeoXForCausalLM")]
    [TestCase("\"hidden_size\":64", "\"hidden_size\":\"64\"", "hidden_size")]
    public void Impossible_configs_are_rejected(string from, string to, string mention)
    {
        using var dir = new TempDir();
        string folder = TinyModel.Random(new TinySpec("cfg", Layers: 1)).WriteHfFolder(dir.File("hf"));
        string path = Path.Combine(folder, "config.json");
        string text = File.ReadAllText(path);
        Assert.That(text, Does.Contain(from), "the test edits a field that exists");
        File.WriteAllText(path, text.Replace(from, to, StringComparison.Ordinal));
        var e = Assert.Throws<ModelFormatException>(() => ModelConfigReader.FromHf(path))!;
        Assert.That(e.Message, Does.Contain(mention));
    }
}
