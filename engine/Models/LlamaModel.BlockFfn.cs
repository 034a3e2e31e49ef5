using Engine.Backends;

namespace Engine.Models;

public sealed partial class LlamaModel
{
    /// <summary>
    /// BlockFFN's feed-forward (<see cref="BlockFfnConfig"/>; Song et al., 2025) from the normed rows
    /// <paramref name="h"/> into <paramref name="dst"/>: the router's logits come to the host, which forms the
    /// scores s = RMSNorm(ReLU(W_r·h + b_r))·w_norm per row and the union of the blocks the pass's rows
    /// activate; <see cref="Backend.ChunkSparseFfn"/> then reads only those blocks, once for all rows — one
    /// decoding token, a verified draft or a prefill tile alike. <see cref="BlockSparsity"/> counts what
    /// was skipped.
    /// </summary>
    private void BlockFfnLayer(in Step s, int l, Activation h, Activation dst)
    {
        var b = Backend;
        var c = Config.BlockFfn!;
        var w = _w.Layers[l].BlockFfn!;
        int n = h.Rows, blocks = c.Blocks;
        var m = _blocks ??= new BlockScratch(b, Config, MaxBatch);
        var logits = m.RouterLogits.WithRows(n);
        b.MatMul(h, [new MatMulTarget(w.Router, logits) { Bias = w.RouterBias }], s.Exact);
        Trace?.Invoke("ffn_router", l, logits);
        var scores = m.Scores.AsSpan(0, n * blocks);
        b.Download(logits, scores);
        Array.Clear(m.Used);
        for (int t = 0; t < n; t++)
            RouterScores(scores.Slice(t * blocks, blocks), c, w.RouterNorm, Config.RmsNormEps, m.Used);
        int active = 0;
        for (int e = 0; e < blocks; e++)
        {
            if (m.Used[e])
                m.Active[active++] = e;
        }
        BlockSparsity!.Record(l, scores, n, blocks);
        b.ChunkSparseFfn(h, w.Up, w.Down, blocks, DenseBlockFfn ? m.All : m.Active.AsSpan(0, active), scores, dst, s.Exact);
        Trace?.Invoke("ffn_out", l, dst);
    }

    /// <summary>
    /// One row's scores in place: ReLU, then the configured normalization over the blocks — RMSNorm (eps as
    /// the model's norms) times the router norm's weight, or r / (Σr·scale + 1e-5), or none — in float32, each
    /// row on its own. Marks the blocks left non-zero.
    /// </summary>
    private static void RouterScores(Span<float> row, BlockFfnConfig c, float[]? weight, float eps, bool[] used)
    {
        float squares = 0f, sum = 0f;
        for (int e = 0; e < row.Length; e++)
        {
            if (float.IsNaN(row[e]))
                throw new InvalidOperationException("the BlockFFN router's logits hold NaN: the model's weights or input are not finite");
            row[e] = Math.Max(row[e], 0f);
            squares += row[e] * row[e];
            sum += row[e];
        }
        float scale = c.Normalization switch
        {
            RouterNormalization.Rms => 1f / MathF.Sqrt(squares / row.Length + eps),
            RouterNormalization.Sum => 1f / (sum * c.NormScale + 1e-5f),
            _ => 1f,
        };
        for (int e = 0; e < row.Length; e++)
        {
            row[e] = weight is null ? row[e] * scale : row[e] * scale * weight[e];
            used[e] |= row[e] != 0f;
        }
    }

    /// <summary>
    /// Compute every block for every row (scores still zero where the router says so): the dense
    /// computation the chunk-sparse one must equal, and the baseline its speed is read against.
    /// </summary>
    public bool DenseBlockFfn { get; set; }

    /// <summary>Token- and chunk-level sparsity of the BlockFFN layers so far, or null for other models.</summary>
    public BlockSparsity? BlockSparsity { get; private set; }

    private BlockScratch? _blocks;

    private sealed class BlockScratch : IDisposable
    {
        public BlockScratch(Backend b, ModelConfig config, int rows)
        {
            int blocks = config.BlockFfn!.Blocks;
            RouterLogits = new Activation(b.Allocate((long)rows * blocks), rows, blocks);
            Scores = new float[rows * blocks];
            Used = new bool[blocks];
            Active = new int[blocks];
            All = Enumerable.Range(0, blocks).ToArray();
        }

        public Activation RouterLogits;
        public float[] Scores;
        public bool[] Used;
        public int[] Active, All;

        public void Dispose() => RouterLogits.Buffer.Dispose();
    }
}
