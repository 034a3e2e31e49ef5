using System.Net;
using System.Net.Http.Headers;
using System.Security.Cryptography;
using System.Text.Json;

namespace Engine.Hub;

/// <summary>Progress of a download: bytes so far of the total (null when the server does not say).</summary>
public readonly record struct DownloadProgress(string File, long Bytes, long? Total, bool Resumed);

/// <summary>A hub request that failed in a way the user can act on: the message names the repository, file and cause.</summary>
public sealed class HubException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>
/// Downloads model files from the Hugging Face hub into its cache layout, as huggingface_hub does, so the
/// two share files: <c>models--ORG--NAME/blobs/ETAG</c> holds the bytes, <c>snapshots/COMMIT/FILE</c> links
/// to the blob, <c>refs/REVISION</c> names the commit. <c>HF_HUB_CACHE</c> (else <c>HF_HOME/hub</c>, else
/// <c>~/.cache/huggingface/hub</c>), <c>HF_ENDPOINT</c>, <c>HF_TOKEN</c> and <c>HF_HUB_OFFLINE=1</c> are honoured.
/// </summary>
/// <remarks>
/// A download goes to <c>blobs/ETAG.incomplete</c> and resumes from its length with a range request (a
/// dropped connection is retried from where it stopped); the bytes are checked against the SHA-256 the hub
/// gives for LFS files before the blob takes its name, so the cache never holds a corrupt model under a
/// complete name. A checksum mismatch deletes the partial file; any other failure keeps it for the next try.
/// </remarks>
public sealed class HubClient : IDisposable
{
    private readonly HttpClient _http;
    private readonly bool _ownsHttp;

    /// <param name="cacheDir">The hub cache (default: from the environment, as huggingface_hub).</param>
    /// <param name="endpoint">The hub (default: <c>HF_ENDPOINT</c> or https://huggingface.co).</param>
    /// <param name="token">An access token (default: <c>HF_TOKEN</c>).</param>
    /// <param name="http">An HTTP client to use (redirects are followed by hand; its own setting is ignored).</param>
    public HubClient(string? cacheDir = null, string? endpoint = null, string? token = null, HttpClient? http = null)
    {
        CacheDir = cacheDir ?? DefaultCacheDir();
        Endpoint = (endpoint ?? Environment.GetEnvironmentVariable("HF_ENDPOINT") ?? "https://huggingface.co").TrimEnd('/');
        Token = token ?? Environment.GetEnvironmentVariable("HF_TOKEN");
        Offline = Environment.GetEnvironmentVariable("HF_HUB_OFFLINE") is "1" or "true" or "TRUE" or "yes";
        _ownsHttp = http is null;
        _http = http ?? new HttpClient(new SocketsHttpHandler { AllowAutoRedirect = false, ConnectTimeout = TimeSpan.FromSeconds(30) })
        {
            Timeout = Timeout.InfiniteTimeSpan, // a model takes minutes; stalls are caught per read instead
        };
    }

    public string CacheDir { get; }

    public string Endpoint { get; }

    public string? Token { get; }

    /// <summary>Only the cache is used (<c>HF_HUB_OFFLINE=1</c>); settable for tests and hosts.</summary>
    public bool Offline { get; set; }

    /// <summary>A read that brings nothing for this long is a dropped connection (retried from where it stopped).</summary>
    public TimeSpan StallTimeout { get; set; } = TimeSpan.FromSeconds(60);

    /// <summary>Retries after a dropped connection, each resuming where the last stopped.</summary>
    public int MaxRetries { get; set; } = 5;

    public static string DefaultCacheDir()
    {
        if (Environment.GetEnvironmentVariable("HF_HUB_CACHE") is { Length: > 0 } hub)
            return hub;
        if (Environment.GetEnvironmentVariable("HF_HOME") is { Length: > 0 } home)
            return Path.Combine(home, "hub");
        string user = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        return Path.Combine(Environment.GetEnvironmentVariable("XDG_CACHE_HOME") is { Length: > 0 } xdg ? xdg : Path.Combine(user, ".cache"), "huggingface", "hub");
    }

    /// <summary>The repository's folder in the cache.</summary>
    public string RepoDir(string repo) => Path.Combine(CacheDir, "models--" + CheckRepo(repo).Replace("/", "--", StringComparison.Ordinal));

    /// <summary>The files of a repository at a revision (from the hub's model API).</summary>
    public async Task<IReadOnlyList<string>> ListFilesAsync(string repo, string revision = "main", CancellationToken cancellationToken = default)
    {
        CheckRepo(repo);
        if (Offline)
            throw new HubException($"{repo}: cannot list files offline (HF_HUB_OFFLINE=1): name the file");
        HttpResponseMessage response;
        try
        {
            response = await SendAsync(HttpMethod.Get, $"{Endpoint}/api/models/{repo}/revision/{Uri.EscapeDataString(revision)}", null, repo, null, cancellationToken).ConfigureAwait(false);
        }
        catch (HttpRequestException e)
        {
            throw new HubException($"{repo}: network error: {e.Message}", e);
        }
        using var _ = response;
        using var doc = JsonDocument.Parse(await response.Content.ReadAsStringAsync(cancellationToken).ConfigureAwait(false));
        if (!doc.RootElement.TryGetProperty("siblings", out var siblings) || siblings.ValueKind != JsonValueKind.Array)
            throw new HubException($"{repo}: the hub's answer lists no files");
        return [.. siblings.EnumerateArray().Select(s => s.TryGetProperty("rfilename", out var n) ? n.GetString() : null).OfType<string>()];
    }

    /// <summary>
    /// The local path of <paramref name="file"/> in <paramref name="repo"/> at <paramref name="revision"/>,
    /// downloading it when the cache does not hold it (or, online, holds another commit's version).
    /// </summary>
    public async Task<string> DownloadAsync(string repo, string file, string revision = "main", IProgress<DownloadProgress>? progress = null,
        CancellationToken cancellationToken = default)
    {
        CheckRepo(repo);
        CheckFile(file);
        string repoDir = RepoDir(repo);
        if (Offline)
            return Cached(repo, repoDir, file, revision) ?? throw new HubException($"{repo}/{file}: not in the cache ({repoDir}) and HF_HUB_OFFLINE=1");

        // the file's metadata: the commit, the blob's identity (the LFS SHA-256) and size, and where the bytes are
        string url = $"{Endpoint}/{repo}/resolve/{Uri.EscapeDataString(revision)}/{string.Join('/', file.Split('/').Select(Uri.EscapeDataString))}";
        var (commit, etag, size, location) = await ResolveAsync(url, repo, file, cancellationToken).ConfigureAwait(false);
        string blob = Path.Combine(repoDir, "blobs", etag);
        string snapshot = Path.Combine(repoDir, "snapshots", commit, file);
        Directory.CreateDirectory(Path.GetDirectoryName(blob)!);
        if (!File.Exists(blob))
            await FetchAsync(location, blob, etag, size, repo, file, progress, cancellationToken).ConfigureAwait(false);
        Directory.CreateDirectory(Path.GetDirectoryName(snapshot)!);
        if (File.Exists(snapshot) || new FileInfo(snapshot).LinkTarget is not null)
            File.Delete(snapshot);
        try
        {
            File.CreateSymbolicLink(snapshot, Path.GetRelativePath(Path.GetDirectoryName(snapshot)!, blob));
        }
        catch (IOException)
        {
            File.Copy(blob, snapshot, overwrite: true); // where links are not allowed (Windows without developer mode)
        }
        catch (UnauthorizedAccessException)
        {
            File.Copy(blob, snapshot, overwrite: true);
        }
        if (revision != commit)
        {
            Directory.CreateDirectory(Path.Combine(repoDir, "refs"));
            File.WriteAllText(Path.Combine(repoDir, "refs", revision), commit);
        }
        return snapshot;
    }

    /// <summary>The cached file for a revision (a ref naming a commit, or a commit itself), or null.</summary>
    private static string? Cached(string repo, string repoDir, string file, string revision)
    {
        string refFile = Path.Combine(repoDir, "refs", revision);
        string commit = File.Exists(refFile) ? File.ReadAllText(refFile).Trim() : revision;
        string path = Path.Combine(repoDir, "snapshots", commit, file);
        return File.Exists(path) ? path : null; // (File.Exists follows the link: a dangling one is not a file)
    }

    private async Task<(string Commit, string ETag, long? Size, Uri Location)> ResolveAsync(string url, string repo, string file, CancellationToken cancellationToken)
    {
        HttpResponseMessage response;
        for (int hops = 0; ; hops++)
        {
            try
            {
                response = await SendAsync(HttpMethod.Head, url, null, repo, file, cancellationToken, followRedirects: false).ConfigureAwait(false);
            }
            catch (HttpRequestException e)
            {
                throw new HubException($"{repo}/{file}: network error: {e.Message} (set HF_HUB_OFFLINE=1 to use the cache only)", e);
            }
            // a redirect without the file's metadata (a renamed repository) leads to where the metadata is
            if ((int)response.StatusCode is >= 300 and < 400 && Header(response, "X-Repo-Commit") is null && response.Headers.Location is { } moved && hops < 5)
            {
                url = (moved.IsAbsoluteUri ? moved : new Uri(new Uri(url), moved)).ToString();
                response.Dispose();
                continue;
            }
            break;
        }
        using var _ = response;
        string? commit = Header(response, "X-Repo-Commit");
        // LFS files: the redirect carries the blob's SHA-256 and size; others: the ETag of the content
        string? etag = Header(response, "X-Linked-Etag") ?? response.Headers.ETag?.Tag;
        etag = etag?.Trim('"');
        if (etag is null && response.Headers.TryGetValues("ETag", out var raw))
            etag = raw.First().Trim('"');
        long? size = long.TryParse(Header(response, "X-Linked-Size"), out long linked) ? linked : response.Content.Headers.ContentLength;
        if (commit is null || etag is null)
            throw new HubException($"{repo}/{file}: the hub's answer lacks {(commit is null ? "X-Repo-Commit" : "an ETag")}; is {Endpoint} a Hugging Face hub?");
        if (etag.Contains('/') || etag.Contains('\\') || etag.Contains("..", StringComparison.Ordinal) || commit.Contains('/') || commit.Contains('\\') || commit.Contains("..", StringComparison.Ordinal))
            throw new HubException($"{repo}/{file}: the hub named the blob '{etag}' at commit '{commit}', which is not a plain name");
        Uri location = response.StatusCode is HttpStatusCode.Redirect or HttpStatusCode.Found or HttpStatusCode.TemporaryRedirect or HttpStatusCode.MovedPermanently or HttpStatusCode.PermanentRedirect
            && response.Headers.Location is { } next
            ? (next.IsAbsoluteUri ? next : new Uri(new Uri(url), next))
            : new Uri(url);
        return (commit, etag, size, location);
    }

    private async Task FetchAsync(Uri location, string blob, string etag, long? size, string repo, string file, IProgress<DownloadProgress>? progress, CancellationToken cancellationToken)
    {
        string partial = blob + ".incomplete";
        bool resumed = File.Exists(partial) && new FileInfo(partial).Length > 0;
        var buffer = new byte[1 << 20];
        for (int attempt = 0; ; attempt++)
        {
            long have = File.Exists(partial) ? new FileInfo(partial).Length : 0;
            if (size is long total && have > total)
            {
                File.Delete(partial); // longer than the file: not a prefix of it
                have = 0;
            }
            if (size is long whole && have == whole)
                break;
            try
            {
                var range = have > 0 ? new RangeHeaderValue(have, null) : null;
                using var response = await SendAsync(HttpMethod.Get, location.ToString(), range, repo, file, cancellationToken).ConfigureAwait(false);
                if (have > 0 && response.StatusCode != HttpStatusCode.PartialContent)
                    have = 0; // the server sent the whole file: start over
                long? expected = size ?? (response.Content.Headers.ContentLength is long length ? have + length : null);
                await using var output = new FileStream(partial, have > 0 ? FileMode.Append : FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16);
                await using var input = await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
                long done = have;
                progress?.Report(new DownloadProgress(file, done, expected, resumed || have > 0));
                while (true)
                {
                    using var stall = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
                    stall.CancelAfter(StallTimeout);
                    int n;
                    try
                    {
                        n = await input.ReadAsync(buffer, stall.Token).ConfigureAwait(false);
                    }
                    catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
                    {
                        throw new IOException($"no data for {StallTimeout.TotalSeconds:F0} s");
                    }
                    if (n == 0)
                        break;
                    await output.WriteAsync(buffer.AsMemory(0, n), cancellationToken).ConfigureAwait(false);
                    done += n;
                    progress?.Report(new DownloadProgress(file, done, expected, resumed || have > 0));
                }
                await output.FlushAsync(cancellationToken).ConfigureAwait(false);
                if (expected is long e && done < e)
                    throw new IOException($"the connection ended at {done} of {e} bytes");
                break;
            }
            catch (IOException ex) when (ex.InnerException is null && ex.Message.Contains("No space left", StringComparison.OrdinalIgnoreCase))
            {
                // a full disk is not a dropped connection: no retry, whatever the retries left
                throw new HubException($"{repo}/{file}: the disk is full ({Path.GetDirectoryName(blob)}); the partial download is kept for resuming", ex);
            }
            catch (Exception ex) when (ex is IOException or HttpRequestException && !cancellationToken.IsCancellationRequested && attempt < MaxRetries)
            {
                await Task.Delay(TimeSpan.FromMilliseconds(200 * (attempt + 1)), cancellationToken).ConfigureAwait(false);
            }
            catch (IOException ex) when (!cancellationToken.IsCancellationRequested)
            {
                throw new HubException($"{repo}/{file}: {ex.Message} (after {MaxRetries} retries); the partial download {partial} is kept for resuming", ex);
            }
            catch (HttpRequestException ex) when (!cancellationToken.IsCancellationRequested)
            {
                throw new HubException($"{repo}/{file}: network error: {ex.Message} (after {MaxRetries} retries); the partial download {partial} is kept for resuming", ex);
            }
        }
        // an LFS blob's name is its SHA-256: check it before the file becomes the blob
        if (etag.Length == 64 && etag.All(Uri.IsHexDigit))
        {
            string actual;
            await using (var stream = File.OpenRead(partial))
                actual = Convert.ToHexStringLower(await SHA256.HashDataAsync(stream, cancellationToken).ConfigureAwait(false));
            if (!string.Equals(actual, etag, StringComparison.OrdinalIgnoreCase))
            {
                File.Delete(partial);
                throw new HubException($"{repo}/{file}: checksum mismatch (SHA-256 {actual}, the hub says {etag}); the download was deleted");
            }
        }
        File.Move(partial, blob, overwrite: true);
    }

    private async Task<HttpResponseMessage> SendAsync(HttpMethod method, string url, RangeHeaderValue? range, string repo, string? file, CancellationToken cancellationToken,
        bool followRedirects = true)
    {
        var target = new Uri(url);
        for (int hops = 0; ; hops++)
        {
            using var request = new HttpRequestMessage(method, target);
            if (Token is { Length: > 0 } && (target.Host == new Uri(Endpoint).Host))
                request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", Token); // never to a CDN elsewhere
            request.Headers.Range = range;
            request.Headers.UserAgent.ParseAdd("engine/1.0");
            var response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancellationToken).ConfigureAwait(false);
            int status = (int)response.StatusCode;
            if (status is >= 300 and < 400 && response.Headers.Location is { } next)
            {
                if (!followRedirects)
                    return response;
                if (hops >= 10)
                    throw new HubException($"{repo}/{file}: more than 10 redirects");
                target = next.IsAbsoluteUri ? next : new Uri(target, next);
                response.Dispose();
                continue;
            }
            if (response.IsSuccessStatusCode)
                return response;
            string code = Header(response, "X-Error-Code") ?? "";
            string what = file is null ? repo : $"{repo}/{file}";
            response.Dispose();
            throw status switch
            {
                401 or 403 when Token is null => new HubException($"{what}: access denied ({status}); a gated or private repository needs a token (HF_TOKEN)"),
                401 or 403 => new HubException($"{what}: access denied ({status}) with the token given"),
                404 when code == "RepoNotFound" || file is null => new HubException($"{repo}: no such repository on {Endpoint}"),
                404 when code == "RevisionNotFound" => new HubException($"{what}: no such revision"),
                404 => new HubException($"{what}: no such file in the repository"),
                416 => new IOException($"the server refused the range (status 416)"),
                _ => new HubException($"{what}: the hub answered {status} {response.ReasonPhrase}"),
            };
        }
    }

    private static string? Header(HttpResponseMessage response, string name) =>
        response.Headers.TryGetValues(name, out var values) ? values.FirstOrDefault()
        : response.Content.Headers.TryGetValues(name, out var content) ? content.FirstOrDefault() : null;

    private static string CheckRepo(string repo)
    {
        ArgumentNullException.ThrowIfNull(repo);
        var parts = repo.Split('/');
        if (parts.Length != 2 || parts.Any(p => p.Length == 0 || p is "." or ".." || p.Any(c => !(char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.'))))
            throw new ArgumentException($"'{repo}' is not a hub repository name (ORG/NAME of letters, digits, '-', '_', '.')", nameof(repo));
        return repo;
    }

    private static void CheckFile(string file)
    {
        ArgumentNullException.ThrowIfNull(file);
        if (file.Length == 0 || file.StartsWith('/') || file.Contains('\\') || file.Split('/').Any(p => p is "" or "." or ".."))
            throw new ArgumentException($"'{file}' is not a file path inside a repository", nameof(file));
    }

    public void Dispose()
    {
        if (_ownsHttp)
            _http.Dispose();
    }
}

/// <summary>What of a repository makes a model: one GGUF file, or an HF folder (config, tokenizer, safetensors).</summary>
public static class HubModel
{
    /// <summary>
    /// Downloads the model <paramref name="file"/> names in <paramref name="repo"/> (a GGUF file), or, when it
    /// is null, the repository's only GGUF file (Q4_K_M where there are several), or its HF folder files;
    /// returns the path to load.
    /// </summary>
    public static async Task<string> DownloadAsync(HubClient hub, string repo, string? file = null, string revision = "main",
        IProgress<DownloadProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(hub);
        if (file is not null)
            return await hub.DownloadAsync(repo, file, revision, progress, cancellationToken).ConfigureAwait(false);
        var files = await hub.ListFilesAsync(repo, revision, cancellationToken).ConfigureAwait(false);
        var ggufs = files.Where(f => f.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase)).ToList();
        if (ggufs.Count > 0)
        {
            var pick = ggufs.Count == 1 ? ggufs[0]
                : ggufs.FirstOrDefault(f => f.Contains("Q4_K_M", StringComparison.OrdinalIgnoreCase))
                ?? throw new HubException($"{repo} holds {ggufs.Count} GGUF files; name one: {string.Join(", ", ggufs.Take(12))}{(ggufs.Count > 12 ? ", …" : "")}");
            return await hub.DownloadAsync(repo, pick, revision, progress, cancellationToken).ConfigureAwait(false);
        }
        if (!files.Contains("config.json"))
            throw new HubException($"{repo}: neither a GGUF file nor config.json (files: {string.Join(", ", files.Take(12))})");
        string[] wanted = ["config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "generation_config.json", "model.safetensors.index.json"];
        string? folder = null;
        foreach (string f in files.Where(f => wanted.Contains(f) || (f.EndsWith(".safetensors", StringComparison.Ordinal) && !f.Contains('/'))))
            folder = Path.GetDirectoryName(await hub.DownloadAsync(repo, f, revision, progress, cancellationToken).ConfigureAwait(false));
        return folder!;
    }
}
