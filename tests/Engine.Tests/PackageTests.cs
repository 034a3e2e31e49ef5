using System.Diagnostics;

namespace Engine.Tests;

/// <summary>
/// The NuGet packages as a consumer meets them: <c>dotnet pack</c> of Engine.Core, Engine.Cuda and
/// Engine.Server into a local folder feed, a fresh console project (outside the repository, its own package
/// folder) that references them by version, restores them from the feed, loads stories260K and decodes
/// greedily — the ids equal the shared reference, the native CPU kernels come from the package's
/// <c>runtimes/RID/native</c> folder — then builds a backend through Engine.Cuda's factory and serves the
/// model with Engine.Server on a loopback port, asking it for a completion over HTTP.
/// </summary>
public class PackageTests
{
    private static (int Code, string Output) Dotnet(string workingDirectory, TimeSpan timeout, params string[] args)
    {
        var start = new ProcessStartInfo("dotnet") { WorkingDirectory = workingDirectory, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in args)
            start.ArgumentList.Add(a);
        start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        start.Environment["DOTNET_NOLOGO"] = "1";
        start.Environment.Remove("MSBuildExtensionsPath"); // the test host's MSBuild settings are not the child's
        start.Environment.Remove("MSBUILD_EXE_PATH");
        using var process = Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"dotnet {string.Join(' ', args)} ran past {timeout.TotalSeconds} s");
        }
        return (process.ExitCode, output.Result + error.Result);
    }

    [Test]
    public void The_packages_restore_into_a_fresh_project_generate_text_and_serve()
    {
        string model = SharedData.StoriesGguf;
        var expected = SharedData.StoriesExpected();
        string configuration = AppContext.BaseDirectory.Contains($"{Path.DirectorySeparatorChar}Debug{Path.DirectorySeparatorChar}", StringComparison.Ordinal) ? "Debug" : "Release";
        using var dir = new TempDir();
        string feed = Path.Combine(dir.Path, "feed");
        foreach (string project in new[] { "engine/Engine.Core.csproj", "managed/Engine.Cuda.csproj", "tools/Engine.Server/Engine.Server.csproj" })
        {
            var pack = Dotnet(SharedData.RepositoryRoot, TimeSpan.FromMinutes(3), "pack", project, "-c", configuration, "--no-build", "-o", feed);
            Assert.That(pack.Code, Is.Zero, pack.Output);
        }
        string package = Directory.GetFiles(feed, "Engine.Core.*.nupkg").Single(f => !f.EndsWith(".snupkg", StringComparison.Ordinal));
        string version = Path.GetFileNameWithoutExtension(package)["Engine.Core.".Length..];

        string app = Path.Combine(dir.Path, "app");
        Directory.CreateDirectory(app);
        string global = Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } g ? g
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        // its own package folder (a package of the same version from an earlier run is never reused); the
        // machine's global folder as a fallback for the dependencies, so the restore needs no network
        File.WriteAllText(Path.Combine(app, "app.csproj"), $"""
            <Project Sdk="Microsoft.NET.Sdk">
              <PropertyGroup>
                <OutputType>Exe</OutputType>
                <TargetFramework>net10.0</TargetFramework>
                <Nullable>enable</Nullable>
                <ImplicitUsings>enable</ImplicitUsings>
                <RestorePackagesPath>{Path.Combine(dir.Path, "packages")}</RestorePackagesPath>
                <RestoreAdditionalProjectFallbackFolders>{global}</RestoreAdditionalProjectFallbackFolders>
              </PropertyGroup>
              <ItemGroup>
                <PackageReference Include="Engine.Core" Version="{version}" />
                <PackageReference Include="Engine.Cuda" Version="{version}" />
                <PackageReference Include="Engine.Server" Version="{version}" />
              </ItemGroup>
            </Project>
            """);
        File.WriteAllText(Path.Combine(app, "nuget.config"), $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <packageSources>
                <add key="local" value="{feed}" />
              </packageSources>
            </configuration>
            """);
        File.WriteAllText(Path.Combine(app, "Program.cs"), """
            using Engine.Api;
            using Engine.Sampling;
            using var model = LanguageModel.Load(args[0], new ModelOptions { Threads = 1 });
            using var session = model.CreateSession();
            var ids = session.Generate(model.Tokenizer.Encode("Once upon a time, there was a little dog"),
                new GenerationOptions { MaxTokens = int.Parse(args[1]), Sampling = new SamplingOptions { Temperature = 0 } }).ToList();
            Console.WriteLine(string.Join(' ', ids));
            using (var backend = Engine.Cuda.BackendFactory.Create("cpu", threads: 1))
                Console.WriteLine("backend: " + backend.GetType().Name);
            await using (var server = await Engine.Server.OpenAiServer.StartAsync(model, null, new Engine.Server.ServerOptions { Port = 0 }))
            {
                using var http = new HttpClient { BaseAddress = server.Address };
                Console.WriteLine("health: " + (int)(await http.GetAsync("/health")).StatusCode);
                var reply = await http.PostAsync("/v1/completions", new StringContent(
                    "{\"prompt\": \"Once upon a time\", \"max_tokens\": 8, \"temperature\": 0}", System.Text.Encoding.UTF8, "application/json"));
                Console.WriteLine("completion: " + (int)reply.StatusCode + " " + (await reply.Content.ReadAsStringAsync()).Contains("\"text\""));
            }
            Console.WriteLine(Engine.Backends.Cpu.CpuBackend.NativeKernelStatus);
            """);
        var run = Dotnet(app, TimeSpan.FromMinutes(5), "run", "-c", "Release", "--", model, expected.AfterPrompt.Length.ToString(System.Globalization.CultureInfo.InvariantCulture));
        Assert.That(run.Code, Is.Zero, run.Output);
        var lines = run.Output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        Assert.That(lines, Does.Contain(string.Join(' ', expected.AfterPrompt)), run.Output);
        Assert.That(lines, Does.Contain("backend: CpuBackend").And.Contain("health: 200").And.Contain("completion: 200 True"), run.Output);
        string native = Path.Combine(SharedData.RepositoryRoot, "build", "native");
        if (Directory.Exists(native) && Directory.GetFiles(native, "*engine_cpu.*").Length > 0)
            Assert.That(lines[^1], Does.StartWith("native kernels"), "the package's runtimes/<rid>/native library is found");
    }
}
