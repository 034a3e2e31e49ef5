using System.Text.Json;

namespace Engine.Formats;

/// <summary>Reading the JSON files of an HF model folder with errors that name the file and field.</summary>
internal static class HfJson
{
    /// <summary>JSON configs are small; anything larger than this is not a config.</summary>
    public const long MaxBytes = 256L << 20;

    public static JsonDocument Parse(string path)
    {
        if (!File.Exists(path))
            throw new FileNotFoundException($"{path}: no such file", path);
        var info = LinkedFile.Resolve(path);
        if (info.Length > MaxBytes)
            throw new ModelFormatException(path, "file", $"{info.Length} bytes is larger than a JSON config may be ({MaxBytes})");
        try
        {
            return JsonDocument.Parse(File.ReadAllBytes(path), new JsonDocumentOptions { MaxDepth = 64, CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
        }
        catch (JsonException e)
        {
            throw new ModelFormatException(path, "json", $"is not valid JSON: {e.Message}", e);
        }
    }

    public static JsonElement Object(string path, JsonElement parent, string key) =>
        parent.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.Object
            ? v
            : throw new ModelFormatException(path, key, "missing or not a JSON object");
}
