using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using Engine.Backends;
using Engine.Backends.Cpu;
using Engine.Quantization;
using Engine.Tensors;

namespace Engine.Benchmarks;

/// <summary>
/// The CPU backend's matrix products, per weight type, on the TinyLlama-1.1B feed-forward shape
/// (5632 × 2048, larger than any cache). One token is decoding: a matrix-vector product whose speed is
/// set by how fast the weights stream from memory, so the GB/s column (weight bytes read per second)
/// is the figure to compare with the machine's bandwidth. 64 tokens is prefill: the matrix kernels,
/// compute bound, compared by GMAC/s (multiply-adds per second). Activation quantization (int8 for the
/// quantized types) is inside the measured time, as it is in a forward pass.
/// The weights are copied enough times to fill 256 MiB (8× this machine's 32 MiB L3) and each call
/// uses the next copy, so that, as in a real model, they come from memory and not from cache.
/// </summary>
[Config(typeof(KernelConfig))]
public unsafe class MatMulBenchmarks
{
    public const int Rows = 5632, Cols = 2048;

    [Params(GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q8_0, GgmlType.Q6_K, GgmlType.Q4_K, GgmlType.Q4_0)]
    public GgmlType Type { get; set; }

    [Params(1, 64)]
    public int Tokens { get; set; }

    [Params(1, 2)]
    public int Threads { get; set; }

    private CpuBackend _backend = null!;
    private DeviceMatrix[] _weights = [];
    private int _next;
    private DeviceBuffer _xBuffer = null!, _yBuffer = null!;
    private Activation _x, _y;
    private byte* _weightMemory, _inputMemory;
    private const long StreamedBytes = 256L << 20;

    public static long WeightBytes(GgmlType type) => GgmlTypeInfo.RowBytes(type, Cols) * Rows;

    [GlobalSetup]
    public void Setup()
    {
        var rng = new Random(1);
        long rowBytes = GgmlTypeInfo.RowBytes(Type, Cols);
        long bytes = rowBytes * Rows;
        int copies = (int)Math.Max(2, (StreamedBytes + bytes - 1) / bytes);
        _weightMemory = (byte*)NativeMemory.AlignedAlloc((nuint)(bytes * copies), 64);
        var row = new float[Cols];
        for (int r = 0; r < Rows; r++)
        {
            for (int c = 0; c < Cols; c++)
                row[c] = (float)(rng.NextDouble() * 2 - 1) * 0.05f;
            Quantize.Row(Type, row, new Span<byte>(_weightMemory + r * rowBytes, (int)rowBytes));
        }
        for (int i = 1; i < copies; i++)
            Buffer.MemoryCopy(_weightMemory, _weightMemory + i * bytes, bytes, bytes);
        _backend = new CpuBackend(Threads);
        _weights = new DeviceMatrix[copies];
        for (int i = 0; i < copies; i++)
            _weights[i] = _backend.LoadMatrix(new TensorView("w", Type, [Cols, Rows], _weightMemory + i * bytes, bytes));

        // The input rows go in through the public API: an F32 "embedding" of Tokens rows, looked up.
        _inputMemory = (byte*)NativeMemory.AlignedAlloc((nuint)Tokens * Cols * sizeof(float), 64);
        var input = new Span<float>(_inputMemory, Tokens * Cols);
        for (int i = 0; i < input.Length; i++)
            input[i] = (float)(rng.NextDouble() * 2 - 1);
        using var table = _backend.LoadMatrix(new TensorView("x", GgmlType.F32, [Cols, Tokens], _inputMemory, (long)Tokens * Cols * sizeof(float)));
        _xBuffer = _backend.Allocate((long)Tokens * Cols);
        _yBuffer = _backend.Allocate((long)Tokens * Rows);
        _x = new Activation(_xBuffer, Tokens, Cols);
        _y = new Activation(_yBuffer, Tokens, Rows);
        Span<int> ids = stackalloc int[Tokens];
        for (int i = 0; i < Tokens; i++)
            ids[i] = i;
        _backend.Embed(table, ids, _x);
    }

    [Benchmark]
    public void MatMul()
    {
        var weights = _weights[_next];
        _next = (_next + 1) % _weights.Length;
        _backend.MatMul(_x, [new MatMulTarget(weights, _y)]);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var weights in _weights)
            weights.Dispose();
        _xBuffer.Dispose();
        _yBuffer.Dispose();
        _backend.Dispose();
        NativeMemory.AlignedFree(_weightMemory);
        NativeMemory.AlignedFree(_inputMemory);
    }
}
