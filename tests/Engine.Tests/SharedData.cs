namespace Engine.Tests;

/// <summary>
/// Locates <c>../shared</c> (the real model and tokenizer vectors beside the repository). Tests that
/// need it are ignored with a message where it is absent, so a fresh clone passes; under CI
/// (<c>CI=true</c>) its absence is a failure, so CI cannot pass by skipping.
/// </summary>
public static class SharedData
{
    private static readonly Lazy<string?> Root = new(FindRoot);

    /// <summary>The repository root (the folder holding Engine.sln), found from the test binary upwards.</summary>
    public static string RepositoryRoot { get; } = FindRepositoryRoot();

    /// <summary>Full path of a file or folder under ../shared; ignores or fails the test when it is missing.</summary>
    public static string Require(string relative)
    {
        string? root = Root.Value;
        string? path = root is null ? null : Path.Combine(root, relative);
        if (path is not null && (File.Exists(path) || Directory.Exists(path)))
            return path;
        string message = $"../shared/{relative} is not available (looked beside {RepositoryRoot}; set ENGINE_SHARED to its location)";
        if (IsCi)
            Assert.Fail(message + " — required under CI");
        Assert.Ignore(message);
        return "";
    }

    public static bool IsCi => string.Equals(Environment.GetEnvironmentVariable("CI"), "true", StringComparison.OrdinalIgnoreCase);

    public static string StoriesGguf => Require("models/stories260K/stories260K.gguf");

    public static string StoriesHf => Require("models/stories260K/hf");

    private static string? FindRoot()
    {
        string? env = Environment.GetEnvironmentVariable("ENGINE_SHARED");
        if (!string.IsNullOrEmpty(env))
            return Directory.Exists(env) ? env : null;
        string candidate = Path.GetFullPath(Path.Combine(RepositoryRoot, "..", "shared"));
        return Directory.Exists(candidate) ? candidate : null;
    }

    private static string FindRepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Engine.sln")))
                return dir.FullName;
        }
        return Path.GetFullPath(AppContext.BaseDirectory);
    }

    /// <summary>The expected ids of ../shared/models/stories260K/expected.md, by section.</summary>
    public static (int[] FromBos, int[] AfterPrompt, string TextFromBos, string TextAfterPrompt) StoriesExpected()
    {
        string md = File.ReadAllText(Require("models/stories260K/expected.md"));
        var blocks = md.Split("```").Where((_, i) => i % 2 == 1).Select(b => b.Trim('\n')).ToArray();
        int[] Ids(string s) => s.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray();
        // Blocks in order: ids from BOS, text from BOS, ids after the prompt; the prompt's text is inline.
        string promptText = md[(md.IndexOf("Text: `", md.IndexOf("Greedy after a prompt", StringComparison.Ordinal), StringComparison.Ordinal) + 7)..];
        promptText = promptText[..promptText.IndexOf('`', StringComparison.Ordinal)];
        return (Ids(blocks[0]), Ids(blocks[2]), blocks[1], promptText);
    }
}
