namespace Engine.Formats;

/// <summary>
/// A file reached through symbolic links, resolved to what it points at: the Hugging Face hub cache keeps
/// a repository's files as links from <c>snapshots/</c> into <c>blobs/</c>, and a <see cref="FileInfo"/> of
/// a link reports the link's own length, not the model's.
/// </summary>
public static class LinkedFile
{
    /// <summary>The file at the end of <paramref name="path"/>'s links (the path itself when it is no link).</summary>
    /// <exception cref="FileNotFoundException">A link points at nothing.</exception>
    public static FileInfo Resolve(string path)
    {
        var info = new FileInfo(path);
        if (info.LinkTarget is null)
            return info;
        var target = info.ResolveLinkTarget(returnFinalTarget: true) as FileInfo;
        if (target is null || !target.Exists)
            throw new FileNotFoundException($"{path}: a link to '{info.LinkTarget}', which does not exist", path);
        return target;
    }
}
