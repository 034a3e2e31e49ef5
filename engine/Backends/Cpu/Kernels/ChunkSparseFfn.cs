using System.Numerics.Tensors;
using Engine.Tensors;

namespace Engine.Backends.Cpu.Kernels;

/// <summary>
/// BlockFFN's chunk-sparse FFN on the CPU (Song et al., "BlockFFN: Towards End-Side Acceleration-Friendly
/// Mixture-of-Experts with Chunk-Level Activation Sparsity", 2025): for a chunk of N tokens only the union
/// of the blocks they activate is read, once for the whole chunk — the up rows of those blocks in one
/// matrix product (<see cref="CpuBackend.MatMul(Activation, ReadOnlySpan{MatMulTarget}, bool)"/> over one
/// target per active block), then <see cref="Activate"/>, then <see cref="DownWork"/>: each chunk of output
/// rows runs every active block's down matrix rows against that block's hidden values and adds them up in
/// ascending block order. The block order of the sum is what makes the sparse result equal the dense one
/// (every block listed) bit for bit: a block whose score is 0 for a row gives exact zeros there.
/// </summary>
internal static class ChunkSparseFfn
{
    /// <summary>h = silu(h) · score = h·σ(h)·score for the [rows, blockSize] hidden values of one block (a score per row).</summary>
    public static void Activate(Span<float> h, int rows, int blockSize, ReadOnlySpan<float> scores, int blocks, int block, Span<float> sigmoid)
    {
        for (int t = 0; t < rows; t++)
        {
            var row = h.Slice(t * blockSize, blockSize);
            float s = scores[t * blocks + block];
            if (s == 0f)
            {
                row.Clear(); // +0 exactly (silu(u)·0 could be -0)
                continue;
            }
            TensorPrimitives.Sigmoid(row, sigmoid);
            TensorPrimitives.Multiply(row, sigmoid, row);
            TensorPrimitives.Multiply(row, s, row);
        }
    }

    /// <summary>
    /// The down half over a range of output rows: y[t, o] = Σ_{e ∈ active, ascending} down_e[o, :] · h_e[t, :]
    /// with each block's product from the row kernels (<see cref="MatMul.Rows"/>, which give a row the same
    /// bits in any batch), written into the caller's zeroed y.
    /// </summary>
    public sealed class DownWork(int blocks) : IParallelWork
    {
        private TensorView[] _down = [];
        private float[][] _hidden = [];
        private QuantizedActivations?[] _quantized = [];
        private int[] _active = new int[blocks]; // room for every block from the start: nothing allocated when more turn on
        private int _count, _rows, _dim;
        private float[] _y = [], _part = [];

        public void Set(TensorView[] down, float[][] hidden, QuantizedActivations?[] quantized, ReadOnlySpan<int> active, int rows, int dim, float[] y, float[] part)
        {
            (_down, _hidden, _quantized, _rows, _dim, _y, _part) = (down, hidden, quantized, rows, dim, y, part);
            if (_active.Length < active.Length)
                _active = new int[Math.Max(active.Length, 2 * _active.Length)];
            active.CopyTo(_active);
            _count = active.Length;
        }

        public void Execute(int chunk, int chunks)
        {
            var (o0, o1) = WorkerPool.Range(_dim, chunk, chunks);
            if (o0 >= o1)
                return;
            for (int t = 0; t < _rows; t++)
                _y.AsSpan(t * _dim + o0, o1 - o0).Clear();
            for (int i = 0; i < _count; i++)
            {
                int e = _active[i];
                MatMul.Rows(_down[e], null, _hidden[e], _quantized[e], null, null, _rows, _part, o0, o1);
                for (int t = 0; t < _rows; t++)
                {
                    var y = _y.AsSpan(t * _dim + o0, o1 - o0);
                    TensorPrimitives.Add(y, _part.AsSpan(t * _dim + o0, o1 - o0), y);
                }
            }
        }
    }
}
