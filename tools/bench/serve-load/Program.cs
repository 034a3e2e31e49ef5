using System.Diagnostics;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Engine.Api;
using Engine.Server;
using Engine.Serving;

// serve-load MODEL [--clients 16] [--tokens 64] [--requests 2] [--rounds 1] [--soak-clients 64] [--soak-seconds 60] [--threads N]
//            [--parallel N] [--device cpu|cuda[:N]] [--cache-type f32|f16|q8_0] [--spec DRAFT] [--no-kv-reserve] [--url http://127.0.0.1:PORT]
//
// The in-process server reserves its KV pool at start as engine serve does (--no-kv-reserve: blocks made on first use).
//
// Starts engine serve's OpenAiServer in-process on 127.0.0.1 (a free port) — or, with --url, loads the
// model only for its tokenizer and drives another OpenAI-compatible server on loopback (llama-server on
// the same file, for a peer's numbers) — and measures, each against a baseline from the same run:
//   1. aggregate decode throughput of N concurrent streaming clients vs one client (continuous batching),
//      --rounds times, one client then N in each round, and the medians (the machine's speed drifts between
//      runs, so each round's ratio is taken within the round);
//   2. time to first token of a request whose ~1,000-token system prompt is cached vs the first one (prefix caching);
//   3. a soak: M concurrent clients for S seconds — requests lost, malformed streams, memory before and after.
if (args.Length == 0 || args[0].StartsWith('-'))
{
    Console.Error.WriteLine("usage: serve-load MODEL [--clients 16] [--tokens 64] [--requests 2] [--rounds 1] [--soak-clients 64] [--soak-seconds 60] [--threads N] [--parallel N] [--device cpu|cuda] [--cache-type f32|f16|q8_0] [--spec DRAFT] [--no-kv-reserve] [--url URL]");
    return 2;
}
string path = args[0];
int Arg(string name, int fallback)
{
    int i = Array.IndexOf(args, name);
    return i >= 0 && i + 1 < args.Length ? int.Parse(args[i + 1], System.Globalization.CultureInfo.InvariantCulture) : fallback;
}
int clients = Arg("--clients", 16), tokens = Arg("--tokens", 64), requests = Arg("--requests", 2), rounds = Arg("--rounds", 1);
if (clients < 1 || tokens < 1 || requests < 1 || rounds < 1 || rounds > 100)
{
    Console.Error.WriteLine($"serve-load: --clients {clients}, --tokens {tokens}, --requests {requests} must be positive and --rounds {rounds} 1 to 100");
    return 2;
}
int soakClients = Arg("--soak-clients", 64), soakSeconds = Arg("--soak-seconds", 60), threads = Arg("--threads", 0);
int parallel = Arg("--parallel", Math.Max(clients, 16));
string? StringArg(string name)
{
    int i = Array.IndexOf(args, name);
    return i >= 0 && i + 1 < args.Length ? args[i + 1] : null;
}
string device = StringArg("--device") ?? "cpu";
string? cacheName = StringArg("--cache-type");
if (cacheName is not (null or "auto" or "f32" or "f16" or "q8_0"))
{
    Console.Error.WriteLine($"serve-load: --cache-type {cacheName}: expected f32, f16, q8_0 or auto");
    return 2;
}
Engine.Tensors.GgmlType? cacheType = cacheName switch
{
    "f32" => Engine.Tensors.GgmlType.F32,
    "f16" => Engine.Tensors.GgmlType.F16,
    "q8_0" => Engine.Tensors.GgmlType.Q8_0,
    _ => null,
};
var url = StringArg("--url") is { } u ? new Uri(u) : null;
if (url is not null && !System.Net.IPAddress.IsLoopback(System.Net.IPAddress.Parse(url.Host)))
{
    Console.Error.WriteLine($"serve-load: --url {url} is not on loopback: the load test only drives local servers");
    return 2;
}

using var lm = url is not null
    ? LanguageModel.Load(path, new ModelOptions { Threads = 1, ContextLength = 2048 }) // for the tokenizer only
    : LanguageModel.Load(path, new ModelOptions { Threads = threads, ContextLength = 2048, Backend = Engine.Cuda.BackendFactory.Create(device, threads, false, cacheType) });
await using var server = url is not null ? null : await OpenAiServer.StartAsync(lm, null, new ServerOptions
{
    Port = 0, Scheduler = new SchedulerOptions { Parallel = parallel, MaxQueue = 256, SpeculativeDraft = Arg("--spec", 0), ReserveKvPool = !args.Contains("--no-kv-reserve") },
});
using var http = new HttpClient { BaseAddress = url ?? server!.Address, Timeout = TimeSpan.FromMinutes(5) };
Console.WriteLine($"serve-load: {Path.GetFileName(path)} at {http.BaseAddress} ({(url is null ? $"engine on {lm.Backend.Name}, parallel {parallel}" : "external server")}), "
    + $"{Environment.ProcessorCount} cores");

// One streamed completion: (generated tokens, seconds to the first token, seconds in all, well-formed).
async Task<(int Tokens, double FirstToken, double Seconds, bool WellFormed)> Stream(string prompt, int maxTokens)
{
    var clock = Stopwatch.StartNew();
    string body = JsonSerializer.Serialize(new Dictionary<string, object>
    {
        ["prompt"] = prompt, ["max_tokens"] = maxTokens, ["ignore_eos"] = true, ["temperature"] = 0, ["stream"] = true,
        ["stream_options"] = new Dictionary<string, object> { ["include_usage"] = true },
    });
    using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = new StringContent(body, Encoding.UTF8, "application/json") };
    // a connection per request, for every server alike: llama-server closes kept-alive connections after a
    // few requests, and a request racing that close would count as lost
    request.Headers.ConnectionClose = true;
    HttpResponseMessage response;
    try
    {
        response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
    }
    catch (HttpRequestException)
    {
        return (0, 0, clock.Elapsed.TotalSeconds, false);
    }
    using var _ = response;
    if (!response.IsSuccessStatusCode)
        return (0, 0, clock.Elapsed.TotalSeconds, false);
    using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
    double first = 0;
    int usageTokens = -1, chunks = 0;
    bool done = false, ok = response.Content.Headers.ContentType?.MediaType == "text/event-stream";
    while (await reader.ReadLineAsync() is { } line)
    {
        if (line.Length == 0)
            continue;
        if (!line.StartsWith("data: ", StringComparison.Ordinal) || done)
        {
            ok = false;
            continue;
        }
        string data = line[6..];
        if (data == "[DONE]")
        {
            done = true;
            continue;
        }
        using var chunk = JsonDocument.Parse(data);
        if (first == 0)
            first = clock.Elapsed.TotalSeconds;
        if (chunk.RootElement.TryGetProperty("usage", out var usage) && usage.ValueKind == JsonValueKind.Object)
            usageTokens = usage.GetProperty("completion_tokens").GetInt32();
        else if (chunk.RootElement.TryGetProperty("choices", out var choices) && choices.GetArrayLength() > 0
            && choices[0].TryGetProperty("text", out var text) && text.GetString() is { Length: > 0 })
            chunks++;
    }
    int generated = usageTokens >= 0 ? usageTokens : chunks; // a server without stream usage: one token per chunk
    return (generated, first, clock.Elapsed.TotalSeconds, ok && done && generated == maxTokens);
}

string Prompt(int i) => $"Once upon a time, in a town numbered {i}, there lived";

// 1. one client, then N at once
await Stream(Prompt(0), 8); // warm-up
double Throughput(IEnumerable<(int Tokens, double FirstToken, double Seconds, bool WellFormed)> results, double seconds) => results.Sum(r => r.Tokens) / seconds;
var clock = new Stopwatch();
// Where a phase's time went, per scheduler step: the forward pass, the rest of the step (sampling, streaming),
// and between steps (the scheduler waiting for work) — printed for the one-client and the N-client phases.
void Breakdown(int clients, SchedulerMetrics m0, SchedulerMetrics m1, double seconds)
{
    if (m1.Steps <= m0.Steps)
        return;
    double steps = m1.Steps - m0.Steps, forward = (m1.ForwardSeconds - m0.ForwardSeconds) / steps, step = (m1.StepSeconds - m0.StepSeconds) / steps;
    Console.WriteLine($"  {clients} client{(clients == 1 ? "" : "s")}: {steps:F0} steps, {(m1.GeneratedTokens - m0.GeneratedTokens) / steps:F1} tokens a step; a step {seconds / steps * 1000:F2} ms: "
        + $"forward {forward * 1000:F2}, sampling and streaming {(step - forward) * 1000:F2}, between steps {(seconds / steps - step) * 1000:F2}");
}
var ones = new List<double>();
var alls = new List<double>();
var ratios = new List<double>();
for (int round = 0; round < rounds; round++)
{
    int p = round * 10_000; // prompts of their own in every round: none is in the prefix cache
    var s0 = server?.Scheduler.Metrics();
    clock.Restart();
    var single = new List<(int, double, double, bool)>();
    for (int r = 0; r < requests; r++)
        single.Add(await Stream(Prompt(p + r), tokens));
    double one = Throughput(single, clock.Elapsed.TotalSeconds);
    var m0 = server?.Scheduler.Metrics();
    if (m0 is not null && s0 is not null)
        Breakdown(1, s0, m0, clock.Elapsed.TotalSeconds);
    clock.Restart();
    var many = await Task.WhenAll(Enumerable.Range(0, clients).Select(async c =>
    {
        var list = new List<(int, double, double, bool)>();
        for (int r = 0; r < requests; r++)
            list.Add(await Stream(Prompt(p + 100 + c * requests + r), tokens));
        return list;
    }));
    double all = Throughput(many.SelectMany(l => l), clock.Elapsed.TotalSeconds);
    Console.WriteLine($"throughput: 1 client {one:F1} tok/s, {clients} clients {all:F1} tok/s aggregate = {all / one:F2}x");
    if (server?.Scheduler.Metrics() is { } m1 && m0 is not null)
        Breakdown(clients, m0, m1, clock.Elapsed.TotalSeconds);
    ones.Add(one);
    alls.Add(all);
    ratios.Add(all / one);
}
if (rounds > 1)
{
    static double Median(List<double> values)
    {
        var sorted = values.Order().ToList();
        return sorted.Count % 2 == 1 ? sorted[sorted.Count / 2] : (sorted[sorted.Count / 2 - 1] + sorted[sorted.Count / 2]) / 2;
    }
    Console.WriteLine($"throughput, median of {rounds} rounds: 1 client {Median(ones):F1} tok/s, {clients} clients {Median(alls):F1} tok/s, "
        + $"ratio {Median(ratios):F2}x (rounds {string.Join(", ", ratios.Select(r => r.ToString("F2", System.Globalization.CultureInfo.InvariantCulture)))})");
}

// 2. a ~1,000-token system prompt, first and then cached
var system = new StringBuilder();
while (lm.Tokenizer.Encode(system.ToString()).Count < 1000)
    system.Append("The assistant answers every question about the little town, its river, its baker and its cat, kindly and briefly. ");
var cold = await Stream(system + "Question 0: who lives by the river?", 1);
var warm = new List<double>();
for (int q = 1; q <= 5; q++)
    warm.Add((await Stream(system + $"Question {q}: what does the baker sell?", 1)).FirstToken);
warm.Sort();
double warmMedian = warm[warm.Count / 2];
Console.WriteLine($"prefix cache: {lm.Tokenizer.Encode(system.ToString()).Count}-token system prompt, first token after {cold.FirstToken * 1000:F0} ms cold, "
    + $"{warmMedian * 1000:F0} ms cached (median of 5) = {warmMedian / cold.FirstToken:P1}");

// 3. soak
GC.Collect();
long before = Process.GetCurrentProcess().WorkingSet64;
using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(soakSeconds));
int sent = 0, wellFormed = 0, lost = 0;
var soak = await Task.WhenAll(Enumerable.Range(0, soakClients).Select(async c =>
{
    var rng = new Random(c);
    while (!stop.IsCancellationRequested)
    {
        Interlocked.Increment(ref sent);
        try
        {
            var r = await Stream(Prompt(rng.Next(1000)), 8 + rng.Next(24));
            if (r.WellFormed)
                Interlocked.Increment(ref wellFormed);
            else
                Interlocked.Increment(ref lost);
        }
        catch (Exception)
        {
            Interlocked.Increment(ref lost);
        }
    }
    return 0;
}));
GC.Collect();
long after = Process.GetCurrentProcess().WorkingSet64;
string spec = server is null || server.Scheduler.Options.SpeculativeDraft == 0 ? ""
    : $"; speculative: {server.Scheduler.Metrics().AcceptedTokens} of {server.Scheduler.Metrics().DraftedTokens} draft tokens accepted";
string kv = server is null ? "" : spec + $"; KV blocks in use {server.Scheduler.Metrics().KvUsedBlocks}/{server.Scheduler.Metrics().KvTotalBlocks} "
    + $"(prefix cache {server.Scheduler.Metrics().PrefixCachedBlocks})";
Console.WriteLine($"soak: {soakClients} clients for {soakSeconds} s: {sent} requests, {wellFormed} complete and well-formed, {lost} lost or malformed; "
    + $"this process's working set {before >> 20} MiB before, {after >> 20} MiB after{kv}");
return lost == 0 ? 0 : 1;
