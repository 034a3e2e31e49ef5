namespace Engine.Formats.Gguf;

/// <summary>
/// The key/value metadata of a GGUF file, in file order, with typed getters whose errors name the
/// file, the key and what was found there.
/// </summary>
public sealed class GgufMetadata
{
    private readonly Dictionary<string, GgufValue> _values;
    private readonly List<string> _order;

    internal GgufMetadata(string file, Dictionary<string, GgufValue> values, List<string> order)
    {
        File = file;
        _values = values;
        _order = order;
    }

    public string File { get; }

    public int Count => _order.Count;

    /// <summary>Keys in the order they appear in the file.</summary>
    public IReadOnlyList<string> Keys => _order;

    public bool Contains(string key) => _values.ContainsKey(key);

    public GgufValue? Find(string key) => _values.GetValueOrDefault(key);

    public GgufValue this[string key] =>
        _values.TryGetValue(key, out var v) ? v : throw new ModelFormatException(File, key, "required metadata key is missing");

    public string GetString(string key) => Convert(key, v => v.AsString());

    public string? GetStringOrNull(string key) => Contains(key) ? GetString(key) : null;

    public int GetInt32(string key) => Convert(key, v => v.AsInt32());

    public int GetInt32(string key, int fallback) => Contains(key) ? GetInt32(key) : fallback;

    public float GetSingle(string key) => Convert(key, v => v.AsSingle());

    public float GetSingle(string key, float fallback) => Contains(key) ? GetSingle(key) : fallback;

    public bool GetBool(string key, bool fallback) => Contains(key) ? Convert(key, v => v.AsBool()) : fallback;

    public string[] GetStringArray(string key) => Convert(key, v => v.AsStringArray());

    public float[] GetSingleArray(string key) => Convert(key, v => v.AsSingleArray());

    public int[] GetInt32Array(string key) => Convert(key, v => v.AsInt32Array());

    public byte[] GetByteArray(string key) => Convert(key, v => v.AsByteArray());

    private T Convert<T>(string key, Func<GgufValue, T> convert)
    {
        var value = this[key];
        try
        {
            return convert(value);
        }
        catch (Exception e) when (e is InvalidCastException or OverflowException)
        {
            throw new ModelFormatException(File, key, $"{e.Message} (value {value})");
        }
    }
}
