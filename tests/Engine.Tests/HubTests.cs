using System.Net;
using System.Security.Cryptography;
using Engine.Api;
using Engine.Hub;
using Engine.Sampling;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Engine.Tests;

/// <summary>
/// Hub downloads against a loopback server that answers as the Hugging Face hub does (model API, resolve
/// with a redirect carrying the commit, SHA-256 and size, a CDN honouring ranges), serving the real
/// stories260K GGUF: the cache layout, resuming after a dropped connection or from a partial file,
/// checksum failures, missing repositories and files, tokens, offline mode, and <c>engine pull</c>.
/// </summary>
public class HubTests
{
    private const string Commit = "0123456789abcdef0123456789abcdef01234567";

    /// <summary>A hub imitation on 127.0.0.1 (a free port); counters and switches for the tests.</summary>
    private sealed class FakeHub : IAsyncDisposable
    {
        private readonly WebApplication _app;
        private readonly byte[] _model;
        private readonly string _sha;

        public FakeHub(byte[] model)
        {
            _model = model;
            _sha = Convert.ToHexStringLower(SHA256.HashData(model));
            var builder = WebApplication.CreateSlimBuilder();
            builder.Logging.ClearProviders();
            builder.WebHost.UseKestrel(o => o.Listen(IPAddress.Loopback, 0));
            _app = builder.Build();
            _app.MapGet("/api/models/{org}/{name}/revision/{rev}", (string org, string name, HttpContext ctx) =>
            {
                if (!Known(org, name, ctx))
                    return Task.CompletedTask;
                ctx.Response.ContentType = "application/json";
                return ctx.Response.WriteAsync("""{"id": "x", "siblings": [{"rfilename": "README.md"}, {"rfilename": "stories260K.gguf"}]}""");
            });
            _app.MapMethods("/{org}/{name}/resolve/{rev}/{**file}", ["GET", "HEAD"], (string org, string name, string rev, string file, HttpContext ctx) =>
            {
                if (!Known(org, name, ctx))
                    return;
                if (file != "stories260K.gguf")
                {
                    ctx.Response.StatusCode = 404;
                    ctx.Response.Headers["X-Error-Code"] = "EntryNotFound";
                    return;
                }
                ctx.Response.StatusCode = 302;
                ctx.Response.Headers["X-Repo-Commit"] = Commit;
                ctx.Response.Headers["X-Linked-Etag"] = $"\"{_sha}\"";
                ctx.Response.Headers["X-Linked-Size"] = _model.Length.ToString(System.Globalization.CultureInfo.InvariantCulture);
                ctx.Response.Headers.Location = $"/cdn/{_sha}";
            });
            _app.MapGet("/cdn/{sha}", async (string sha, HttpContext ctx) =>
            {
                Interlocked.Increment(ref _cdnRequests);
                string? range = ctx.Request.Headers.Range;
                long from = 0;
                if (range is not null && range.StartsWith("bytes=", StringComparison.Ordinal))
                {
                    Ranges.Add(range);
                    from = long.Parse(range[6..].TrimEnd('-'), System.Globalization.CultureInfo.InvariantCulture);
                    ctx.Response.StatusCode = 206;
                    ctx.Response.Headers.ContentRange = $"bytes {from}-{_model.Length - 1}/{_model.Length}";
                }
                ctx.Response.ContentLength = _model.Length - from;
                var body = _model.AsMemory((int)from);
                if (Corrupt)
                    body = body.ToArray().Select(b => (byte)(b ^ 1)).ToArray();
                if (DropAfter is int drop && from < drop)
                {
                    DropAfter = null; // once
                    await ctx.Response.Body.WriteAsync(body[..(drop - (int)from)]);
                    await ctx.Response.Body.FlushAsync();
                    await Task.Delay(300); // let what was sent arrive, as a connection that dies mid-file has delivered some
                    ctx.Abort(); // the connection drops mid-file
                    return;
                }
                await ctx.Response.Body.WriteAsync(body);
            });
            _app.StartAsync().GetAwaiter().GetResult();
            Endpoint = _app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        }

        private static bool Known(string org, string name, HttpContext ctx)
        {
            if (org == "tiny" && name == "stories")
                return true;
            if (org == "tiny" && name == "private")
            {
                if (ctx.Request.Headers.Authorization == "Bearer secret")
                    return true;
                ctx.Response.StatusCode = 401;
                return false;
            }
            ctx.Response.StatusCode = 404;
            ctx.Response.Headers["X-Error-Code"] = "RepoNotFound";
            return false;
        }

        public string Endpoint { get; }

        public string Sha => _sha;

        public int? DropAfter { get; set; }

        public bool Corrupt { get; set; }

        private int _cdnRequests;

        public int CdnRequests => _cdnRequests;

        public List<string> Ranges { get; } = [];

        public async ValueTask DisposeAsync() => await _app.DisposeAsync();
    }

    private static byte[] Stories => File.ReadAllBytes(SharedData.StoriesGguf);

    [Test]
    public async Task A_download_lands_in_the_hub_cache_layout_and_loads_as_the_model()
    {
        await using var server = new FakeHub(Stories);
        using var dir = new TempDir();
        using var hub = new HubClient(dir.Path, server.Endpoint);
        var reports = new List<DownloadProgress>();
        string path = await hub.DownloadAsync("tiny/stories", "stories260K.gguf", progress: new Progress(reports));
        string repo = Path.Combine(dir.Path, "models--tiny--stories");
        Assert.That(path, Is.EqualTo(Path.Combine(repo, "snapshots", Commit, "stories260K.gguf")));
        Assert.That(new FileInfo(path).LinkTarget, Is.EqualTo(Path.Combine("..", "..", "blobs", server.Sha)), "a relative link into blobs/, as huggingface_hub makes");
        Assert.That(File.ReadAllText(Path.Combine(repo, "refs", "main")), Is.EqualTo(Commit));
        Assert.That(File.ReadAllBytes(Path.Combine(repo, "blobs", server.Sha)), Is.EqualTo(Stories));
        Assert.That(reports[^1].Bytes, Is.EqualTo(Stories.Length));
        Assert.That(reports[^1].Total, Is.EqualTo(Stories.Length));

        // the same again: the blob is there, nothing is fetched
        int fetched = server.CdnRequests;
        Assert.That(await hub.DownloadAsync("tiny/stories", "stories260K.gguf"), Is.EqualTo(path));
        Assert.That(server.CdnRequests, Is.EqualTo(fetched));

        // through the link, the model loads and decodes as the shared file does
        using var model = await LanguageModel.LoadFromHubAsync("tiny/stories", hub: hub, options: new ModelOptions { Threads = 1 });
        var expected = SharedData.StoriesExpected();
        using var session = model.CreateSession();
        var ids = session.Generate(model.Tokenizer.Encode("Once upon a time, there was a little dog"),
            new GenerationOptions { MaxTokens = expected.AfterPrompt.Length, Sampling = new SamplingOptions { Temperature = 0 } }).ToList();
        Assert.That(ids, Is.EqualTo(expected.AfterPrompt));
    }

    [Test]
    public async Task A_dropped_connection_and_a_partial_file_are_resumed_with_ranges()
    {
        await using var server = new FakeHub(Stories);
        using var dir = new TempDir();
        using var hub = new HubClient(dir.Path, server.Endpoint);
        server.DropAfter = Stories.Length / 3;
        string path = await hub.DownloadAsync("tiny/stories", "stories260K.gguf");
        Assert.That(File.ReadAllBytes(path), Is.EqualTo(Stories));
        // the retry asks for the rest only: from what arrived before the connection dropped (at most what was sent)
        Assert.That(server.Ranges, Has.Count.EqualTo(1));
        long resumedAt = long.Parse(server.Ranges[0]["bytes=".Length..].TrimEnd('-'), System.Globalization.CultureInfo.InvariantCulture);
        Assert.That(resumedAt, Is.GreaterThan(0).And.LessThanOrEqualTo(Stories.Length / 3));

        // a partial download left by an earlier run (killed, say): only the rest is asked for
        using var again = new TempDir();
        string blobs = Path.Combine(again.Path, "models--tiny--stories", "blobs");
        Directory.CreateDirectory(blobs);
        File.WriteAllBytes(Path.Combine(blobs, server.Sha + ".incomplete"), Stories[..1000]);
        using var second = new HubClient(again.Path, server.Endpoint);
        string resumed = await second.DownloadAsync("tiny/stories", "stories260K.gguf");
        Assert.That(File.ReadAllBytes(resumed), Is.EqualTo(Stories));
        Assert.That(server.Ranges[^1], Is.EqualTo("bytes=1000-"));
        Assert.That(File.Exists(Path.Combine(blobs, server.Sha + ".incomplete")), Is.False);
    }

    [Test]
    public async Task Corrupt_bytes_missing_things_and_tokens_give_one_line_errors_and_leave_no_model_behind()
    {
        await using var server = new FakeHub(Stories);
        using var dir = new TempDir();
        using var hub = new HubClient(dir.Path, server.Endpoint);
        server.Corrupt = true;
        var e = (await Assert.ThrowsAsync<HubException>(() => hub.DownloadAsync("tiny/stories", "stories260K.gguf")))!;
        Assert.That(e.Message, Does.Contain("checksum mismatch"));
        string repo = Path.Combine(dir.Path, "models--tiny--stories");
        Assert.That(Directory.GetFiles(Path.Combine(repo, "blobs")), Is.Empty, "neither a blob nor a partial file of corrupt bytes");
        Assert.That(Directory.Exists(Path.Combine(repo, "snapshots")), Is.False);
        server.Corrupt = false;

        Assert.That((await Assert.ThrowsAsync<HubException>(() => hub.DownloadAsync("tiny/nothing", "x.gguf")))!.Message, Does.Contain("tiny/nothing: no such repository"));
        Assert.That((await Assert.ThrowsAsync<HubException>(() => hub.DownloadAsync("tiny/stories", "missing.gguf")))!.Message, Does.Contain("tiny/stories/missing.gguf: no such file"));
        Assert.That((await Assert.ThrowsAsync<HubException>(() => hub.DownloadAsync("tiny/private", "stories260K.gguf")))!.Message, Does.Contain("needs a token (HF_TOKEN)"));
        using var withToken = new HubClient(dir.Path, server.Endpoint, token: "secret");
        Assert.That(File.ReadAllBytes(await withToken.DownloadAsync("tiny/private", "stories260K.gguf")), Is.EqualTo(Stories));
        Assert.Throws<ArgumentException>(() => hub.RepoDir("../etc"));
        await Assert.ThrowsAsync<ArgumentException>(() => hub.DownloadAsync("tiny/stories", "../../x"));
        using var nowhere = new HubClient(dir.Path, "http://127.0.0.1:1");
        Assert.That((await Assert.ThrowsAsync<HubException>(() => nowhere.DownloadAsync("tiny/other", "a.gguf")))!.Message, Does.Contain("network error"));
    }

    [Test]
    public async Task Offline_mode_uses_the_cache_only()
    {
        using var dir = new TempDir();
        string path;
        await using (var server = new FakeHub(Stories))
        {
            using var hub = new HubClient(dir.Path, server.Endpoint);
            path = await hub.DownloadAsync("tiny/stories", "stories260K.gguf");
        }
        using var offline = new HubClient(dir.Path, "http://127.0.0.1:1") { Offline = true };
        Assert.That(await offline.DownloadAsync("tiny/stories", "stories260K.gguf"), Is.EqualTo(path), "no server needed");
        Assert.That((await Assert.ThrowsAsync<HubException>(() => offline.DownloadAsync("tiny/stories", "other.gguf")))!.Message, Does.Contain("HF_HUB_OFFLINE=1"));
    }

    /// <summary>A disk that fills mid-download (the partial file is /dev/full): a one-line error, and no blob under the complete name.</summary>
    [Test]
    public async Task A_full_disk_is_a_one_line_error_and_leaves_no_blob()
    {
        if (!File.Exists("/dev/full"))
            Assert.Ignore("needs /dev/full (Linux) to stand for a full disk");
        await using var server = new FakeHub(Stories);
        using var dir = new TempDir();
        string blobs = Path.Combine(dir.Path, "models--tiny--stories", "blobs");
        Directory.CreateDirectory(blobs);
        File.CreateSymbolicLink(Path.Combine(blobs, server.Sha + ".incomplete"), "/dev/full"); // every write: ENOSPC
        using var hub = new HubClient(dir.Path, server.Endpoint) { MaxRetries = 1 };
        var e = (await Assert.ThrowsAsync<HubException>(() => hub.DownloadAsync("tiny/stories", "stories260K.gguf")))!;
        Assert.That(e.Message, Does.Contain("tiny/stories/stories260K.gguf").And.Contain("disk is full"));
        Assert.That(File.Exists(Path.Combine(blobs, server.Sha)), Is.False);
    }

    /// <summary>The environment decides as for huggingface_hub: HF_HUB_CACHE over HF_HOME/hub, HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE.</summary>
    [Test]
    public void The_hub_environment_variables_are_honoured()
    {
        string[] names = ["HF_HUB_CACHE", "HF_HOME", "HF_ENDPOINT", "HF_TOKEN", "HF_HUB_OFFLINE"];
        var saved = names.ToDictionary(n => n, Environment.GetEnvironmentVariable);
        try
        {
            foreach (string n in names)
                Environment.SetEnvironmentVariable(n, null);
            Environment.SetEnvironmentVariable("HF_HOME", "/tmp/hf-home");
            using (var hub = new HubClient())
            {
                Assert.That(hub.CacheDir, Is.EqualTo(Path.Combine("/tmp/hf-home", "hub")));
                Assert.That(hub.Endpoint, Is.EqualTo("https://huggingface.co"));
                Assert.That(hub.Token, Is.Null);
                Assert.That(hub.Offline, Is.False);
            }
            Environment.SetEnvironmentVariable("HF_HUB_CACHE", "/tmp/hf-cache");
            Environment.SetEnvironmentVariable("HF_ENDPOINT", "http://127.0.0.1:9/");
            Environment.SetEnvironmentVariable("HF_TOKEN", "hf_x");
            Environment.SetEnvironmentVariable("HF_HUB_OFFLINE", "1");
            using (var hub = new HubClient())
            {
                Assert.That(hub.CacheDir, Is.EqualTo("/tmp/hf-cache"));
                Assert.That(hub.Endpoint, Is.EqualTo("http://127.0.0.1:9"));
                Assert.That(hub.Token, Is.EqualTo("hf_x"));
                Assert.That(hub.Offline, Is.True);
            }
        }
        finally
        {
            foreach (var (n, v) in saved)
                Environment.SetEnvironmentVariable(n, v);
        }
    }

    [Test]
    public async Task Engine_pull_prints_the_path_and_names_what_is_missing()
    {
        await using var server = new FakeHub(Stories);
        using var dir = new TempDir();
        var (code, output, err) = CliTests.Run("pull", "tiny/stories", "--endpoint", server.Endpoint, "--cache-dir", dir.Path);
        Assert.That(code, Is.Zero, err);
        Assert.That(output.Trim(), Does.EndWith(Path.Combine("snapshots", Commit, "stories260K.gguf")));
        Assert.That(err, Does.Match(@"downloaded \d+\.\d MiB"));
        var again = CliTests.Run("pull", "tiny/stories", "stories260K.gguf", "--endpoint", server.Endpoint, "--cache-dir", dir.Path);
        Assert.That(again.Err, Does.Contain("in the cache already"));
        var missing = CliTests.Run("pull", "tiny/nothing", "--endpoint", server.Endpoint, "--cache-dir", dir.Path);
        Assert.That(missing.Code, Is.EqualTo(1));
        Assert.That(missing.Err.Trim(), Is.EqualTo($"engine: error: tiny/nothing: no such repository on {server.Endpoint}"));
    }

    private sealed class Progress(List<DownloadProgress> reports) : IProgress<DownloadProgress>
    {
        public void Report(DownloadProgress value)
        {
            lock (reports)
                reports.Add(value);
        }
    }
}
