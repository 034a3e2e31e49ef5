using System.Text.Json;

namespace Engine.Server;

/// <summary>
/// An error as OpenAI's API returns it: <c>{"error": {"message", "type", "param", "code"}}</c> with the
/// matching HTTP status. Thrown while reading a request; the server turns it into the response.
/// </summary>
public sealed class ApiError(int status, string message, string type = "invalid_request_error", string? param = null, string? code = null)
    : Exception(message)
{
    public int Status { get; } = status;
    public string Type { get; } = type;
    public string? Param { get; } = param;
    public string? Code { get; } = code;

    public static ApiError BadRequest(string message, string? param = null, string? code = null) => new(400, message, param: param, code: code);

    public byte[] ToJson() => JsonSerializer.SerializeToUtf8Bytes(new Dictionary<string, object?>
    {
        ["error"] = new Dictionary<string, object?> { ["message"] = Message, ["type"] = Type, ["param"] = Param, ["code"] = Code },
    });
}
