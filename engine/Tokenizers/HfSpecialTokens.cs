using System.Text.Json;
using Engine.Formats;

namespace Engine.Tokenizers;

/// <summary>
/// BOS/EOS as an HF folder states them: ids in <c>config.json</c> and <c>generation_config.json</c>
/// (an EOS may be a list: the first is EOS, all end generation), token texts and the add_bos/add_eos
/// flags in <c>tokenizer_config.json</c>.
/// </summary>
internal sealed record HfSpecialTokens(int? BosId, int? EosId, IReadOnlyList<int> ExtraEos, string? BosText, string? EosText, bool? AddBos, bool? AddEos)
{
    public static HfSpecialTokens Read(string folder)
    {
        int? bos = null, eos = null;
        var extra = new List<int>();
        foreach (string name in new[] { "config.json", "generation_config.json" })
        {
            string path = Path.Combine(folder, name);
            if (!File.Exists(path))
                continue;
            using var doc = HfJson.Parse(path);
            var root = doc.RootElement;
            if (root.TryGetProperty("bos_token_id", out var b) && b.TryGetInt32(out int bi))
                bos ??= bi;
            if (root.TryGetProperty("eos_token_id", out var e))
            {
                if (e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int ei))
                {
                    eos ??= ei;
                    extra.Add(ei);
                }
                else if (e.ValueKind == JsonValueKind.Array)
                {
                    foreach (var item in e.EnumerateArray())
                    {
                        if (item.TryGetInt32(out int id))
                        {
                            eos ??= id;
                            extra.Add(id);
                        }
                    }
                }
            }
        }

        string? bosText = null, eosText = null;
        bool? addBos = null, addEos = null;
        string config = Path.Combine(folder, "tokenizer_config.json");
        if (File.Exists(config))
        {
            using var doc = HfJson.Parse(config);
            var root = doc.RootElement;
            bosText = TokenText(root, "bos_token");
            eosText = TokenText(root, "eos_token");
            addBos = root.TryGetProperty("add_bos_token", out var ab) && ab.ValueKind is JsonValueKind.True or JsonValueKind.False ? ab.GetBoolean() : null;
            addEos = root.TryGetProperty("add_eos_token", out var ae) && ae.ValueKind is JsonValueKind.True or JsonValueKind.False ? ae.GetBoolean() : null;
        }
        return new HfSpecialTokens(bos, eos, extra, bosText, eosText, addBos, addEos);
    }

    /// <summary>A token given as a string or as an AddedToken object with "content".</summary>
    private static string? TokenText(JsonElement root, string key) =>
        !root.TryGetProperty(key, out var v) ? null
        : v.ValueKind == JsonValueKind.String ? v.GetString()
        : v.ValueKind == JsonValueKind.Object && v.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String ? c.GetString()
        : null;
}
