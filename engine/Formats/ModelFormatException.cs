namespace Engine.Formats;

/// <summary>
/// A model, tokenizer or config file is malformed, truncated or unsupported. The message always names
/// the file, the field and the offending value so that a user can act on it without a debugger.
/// </summary>
public sealed class ModelFormatException : Exception
{
    public ModelFormatException(string file, string field, string problem)
        : base($"{Path.GetFileName(file)}: {field}: {problem}")
    {
        File = file;
        Field = field;
    }

    public ModelFormatException(string file, string field, string problem, Exception inner)
        : base($"{Path.GetFileName(file)}: {field}: {problem}", inner)
    {
        File = file;
        Field = field;
    }

    /// <summary>Path of the file that was being read.</summary>
    public string File { get; }

    /// <summary>The header field, metadata key or tensor the problem was found in.</summary>
    public string Field { get; }
}
