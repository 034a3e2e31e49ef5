using System.Globalization;
using System.Reflection;

namespace Engine.Cuda;

/// <summary>
/// Finds the PTX of a kernel file (<c>kernels/&lt;name&gt;.cu</c>) for a device: the directory named by
/// <c>ENGINE_PTX_DIR</c> if set (the GPU machine compiles with its own nvcc and points here), else the
/// resources embedded at build time. Of the <c>&lt;name&gt;.sm_XY.ptx</c> variants, the highest
/// architecture the device can run is chosen (PTX for sm_80 JIT-compiles on Hopper).
/// </summary>
public static class PtxModules
{
    public const string DirectoryVariable = "ENGINE_PTX_DIR";

    /// <summary>(architecture, source description, PTX text) of every variant available for a kernel file.</summary>
    public static IReadOnlyList<(int Arch, string Source, Func<string> Load)> Variants(string kernelFile)
    {
        var found = new List<(int, string, Func<string>)>();
        string? dir = Environment.GetEnvironmentVariable(DirectoryVariable);
        if (!string.IsNullOrEmpty(dir))
        {
            if (Directory.Exists(dir))
            {
                foreach (string path in Directory.GetFiles(dir, kernelFile + ".sm_*.ptx"))
                {
                    if (ArchOf(Path.GetFileName(path), kernelFile) is int arch)
                        found.Add((arch, path, () => File.ReadAllText(path)));
                }
            }
            return found;
        }
        var assembly = typeof(PtxModules).Assembly;
        foreach (string resource in assembly.GetManifestResourceNames())
        {
            if (!resource.StartsWith("ptx/", StringComparison.Ordinal))
                continue;
            string file = resource["ptx/".Length..];
            if (ArchOf(file, kernelFile) is int arch)
                found.Add((arch, "embedded " + file, () => Read(assembly, resource)));
        }
        return found;
    }

    /// <summary>The PTX text to load for a device of compute capability major.minor.</summary>
    public static (string Source, string Ptx) Select(string kernelFile, int major, int minor)
    {
        int device = major * 10 + minor;
        var usable = Variants(kernelFile).Where(v => v.Arch <= device).OrderByDescending(v => v.Arch).ToList();
        if (usable.Count == 0)
        {
            var all = Variants(kernelFile);
            string where = Environment.GetEnvironmentVariable(DirectoryVariable) is { Length: > 0 } d ? $"in {DirectoryVariable}={d}" : "embedded in Engine.Cuda (run `build.ps1 ptx` before building)";
            throw new CudaException(all.Count == 0
                ? $"no PTX for kernels/{kernelFile}.cu {where}"
                : $"no PTX for kernels/{kernelFile}.cu runs on sm_{device} (have: {string.Join(", ", all.Select(v => "sm_" + v.Arch))})");
        }
        return (usable[0].Source, usable[0].Load());
    }

    private static int? ArchOf(string file, string kernelFile)
    {
        string prefix = kernelFile + ".sm_";
        if (!file.StartsWith(prefix, StringComparison.Ordinal) || !file.EndsWith(".ptx", StringComparison.Ordinal))
            return null;
        string digits = file[prefix.Length..^4];
        return int.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out int arch) ? arch : null;
    }

    private static string Read(Assembly assembly, string resource)
    {
        using var stream = assembly.GetManifestResourceStream(resource)!;
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }
}
