using Engine.Tensors;

namespace Engine.Backends;

/// <summary>A block of float32 memory owned by a backend (host memory on the CPU, device memory on a GPU).</summary>
public abstract class DeviceBuffer : IDisposable
{
    /// <summary>Capacity in floats.</summary>
    public abstract long Length { get; }

    public abstract void Dispose();
}

/// <summary>
/// An activation: a row-major [<see cref="Rows"/>, <see cref="Cols"/>] float32 matrix at the start of a
/// backend buffer, one row per token of the batch. A value type, so that views cost no allocation.
/// </summary>
public readonly record struct Activation(DeviceBuffer Buffer, int Rows, int Cols)
{
    public long Size => (long)Rows * Cols;

    /// <summary>The same buffer seen as the first <paramref name="rows"/> rows.</summary>
    public Activation WithRows(int rows) => this with { Rows = rows };

    /// <summary>The same values seen as one row per head: [Rows·(Cols / headDim), headDim] (per-head norms).</summary>
    public Activation AsHeads(int headDim) =>
        Cols % headDim == 0 ? new Activation(Buffer, Rows * (Cols / headDim), headDim)
        : throw new ArgumentException($"an activation of {Cols} columns is not whole heads of {headDim}");

    public override string ToString() => $"[{Rows}, {Cols}]";
}

/// <summary>
/// A weight matrix W of shape [<see cref="Rows"/> = out features, <see cref="Cols"/> = in features],
/// each row stored contiguously in <see cref="Type"/>'s block format, as GGUF stores <c>[in, out]</c>.
/// Matrix products compute x·Wᵀ.
/// </summary>
public abstract class DeviceMatrix : IDisposable
{
    protected DeviceMatrix(string name, GgmlType type, int rows, int cols)
    {
        Name = name;
        Type = type;
        Rows = rows;
        Cols = cols;
    }

    public string Name { get; }

    public GgmlType Type { get; }

    public int Rows { get; }

    public int Cols { get; }

    public virtual void Dispose() { }

    public override string ToString() => $"{Name} {Type} [{Rows} x {Cols}]";
}

/// <summary>A float32 vector weight (a norm's gain, a bias).</summary>
public abstract class DeviceVector : IDisposable
{
    protected DeviceVector(string name, int length)
    {
        Name = name;
        Length = length;
    }

    public string Name { get; }

    public int Length { get; }

    public virtual void Dispose() { }
}
