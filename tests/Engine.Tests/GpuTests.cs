using Engine.Cuda;
using CpuRmsNorm = Engine.Backends.Cpu.Kernels.RmsNorm;

namespace Engine.Tests;

/// <summary>
/// Kernels from kernels/*.cu against their C# references, on a real GPU. Where no CUDA device exists the
/// tests are ignored with the reason; with REQUIRE_GPU=1 (the device script sets it) they fail instead,
/// so a run on a GPU machine cannot pass by skipping.
/// </summary>
[Category("Gpu")]
[NonParallelizable]
public class GpuTests
{
    private static GpuDevice? s_device;

    [OneTimeSetUp]
    public void Open()
    {
        var devices = CudaDriver.Discover(out string reason);
        if (devices.Count == 0)
        {
            string message = $"no CUDA device: {reason}";
            if (Environment.GetEnvironmentVariable("REQUIRE_GPU") == "1")
                Assert.Fail(message + " (REQUIRE_GPU=1)");
            Assert.Ignore(message);
        }
        s_device = GpuDevice.Open(0);
        TestContext.Progress.WriteLine($"GPU: {s_device.Info}");
    }

    [OneTimeTearDown]
    public void Close() => s_device?.Dispose();

    /// <summary>
    /// rms_norm_f32 vs the C# RmsNormF32 on awkward shapes (one element, below/above a warp, above a block).
    /// The kernel sums squares as a tree across threads, the reference left to right: for n terms the two
    /// sums differ by at most about log2(n)+n/32 roundings of 2^-24 relative, so 1e-5 relative to each
    /// row's largest output is ~10× the worst case for n = 4097.
    /// </summary>
    [TestCase(1, 1)]
    [TestCase(3, 31)]
    [TestCase(2, 33)]
    [TestCase(5, 1000)]
    [TestCase(7, 4097)]
    [TestCase(1, 8192)]
    public void RmsNorm_matches_the_cpu_reference(int rows, int cols)
    {
        var device = s_device!;
        var rng = new Random(rows * 10_000 + cols);
        var x = Enumerable.Range(0, rows * cols).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray();
        var w = Enumerable.Range(0, cols).Select(_ => (float)(rng.NextDouble() + 0.5)).ToArray();
        const float eps = 1e-5f;
        var expected = new float[x.Length];
        CpuRmsNorm.RmsNormF32(x, w, eps, expected, rows);

        using var dx = device.Upload(x);
        using var dw = device.Upload(w);
        using var dy = device.Allocate(x.Length);
        Cuda.Kernels.RmsNorm.RmsNormF32(device, dx.View, dw.View, dy.View, rows, cols, eps);
        device.Synchronize();
        var actual = device.Download(dy);
        for (int r = 0; r < rows; r++)
        {
            float scale = expected.AsSpan(r * cols, cols).ToArray().Max(MathF.Abs);
            for (int c = 0; c < cols; c++)
                Assert.That(actual[r * cols + c], Is.EqualTo(expected[r * cols + c]).Within(1e-5f * scale), $"row {r} col {c}");
        }

        // In place (y = x), as the forward pass uses it.
        Cuda.Kernels.RmsNorm.RmsNormF32(device, dx.View, dw.View, dx.View, rows, cols, eps);
        device.Synchronize();
        Assert.That(device.Download(dx)[^1], Is.EqualTo(expected[^1]).Within(1e-5f * MathF.Abs(expected[^1]) + 1e-6f));
    }

    [Test]
    public void Launcher_checks_shapes_before_launching()
    {
        var device = s_device!;
        using var small = device.Allocate(8);
        Assert.Throws<ArgumentException>(() => Cuda.Kernels.RmsNorm.RmsNormF32(device, small.View, small.View, small.View, 2, 8, 1e-5f));
        Assert.Throws<ArgumentOutOfRangeException>(() => Cuda.Kernels.RmsNorm.RmsNormF32(device, small.View, small.View, small.View, 0, 8, 1e-5f));
    }
}

/// <summary>Device discovery must be harmless on machines without CUDA (like CI).</summary>
public class CudaDiscoveryTests
{
    [Test]
    public void Discovery_reports_devices_or_a_reason_and_never_throws()
    {
        var devices = CudaDriver.Discover(out string reason);
        if (devices.Count == 0)
            Assert.That(reason, Is.Not.Empty);
        else
            Assert.That(devices[0].Major, Is.GreaterThan(0));
    }

    [Test]
    public void Opening_a_device_where_there_is_none_is_a_clear_error()
    {
        if (CudaDriver.Discover(out _).Count > 0)
            Assert.Ignore("this machine has a CUDA device");
        var e = Assert.Throws<CudaException>(() => GpuDevice.Open(0))!;
        Assert.That(e.Message, Does.StartWith("no CUDA device"));
    }

    [Test]
    public void Ptx_for_every_kernel_file_is_embedded_for_sm80_and_sm90()
    {
        string kernels = Path.Combine(SharedData.RepositoryRoot, "kernels");
        var files = Directory.GetFiles(kernels, "*.cu").Select(f => Path.GetFileNameWithoutExtension(f)!).ToList();
        Assert.That(files, Does.Contain("rmsnorm"));
        if (PtxModules.Variants("rmsnorm").Count == 0)
        {
            // A build without nvcc has no PTX: fine on a developer machine, an error under CI.
            if (SharedData.IsCi)
                Assert.Fail("no PTX embedded: CI must compile kernels/*.cu (build.ps1 ptx) before building");
            Assert.Ignore("no PTX embedded in this build (nvcc was not found when it was built)");
        }
        foreach (string file in files)
        {
            var archs = PtxModules.Variants(file).Select(v => v.Arch).Order().ToList();
            Assert.That(archs, Is.EqualTo(new[] { 80, 90 }), $"kernels/{file}.cu");
            var (_, ptx) = PtxModules.Select(file, 9, 0);
            Assert.That(ptx, Does.Contain(".target sm_90"), "Hopper gets the sm_90 PTX");
        }
        Assert.That(PtxModules.Select("rmsnorm", 8, 6).Ptx, Does.Contain(".visible .entry rms_norm_f32"));
        Assert.Throws<CudaException>(() => PtxModules.Select("rmsnorm", 7, 5), "no PTX runs on Volta");
    }
}
