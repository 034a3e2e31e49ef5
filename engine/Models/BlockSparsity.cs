namespace Engine.Models;

/// <summary>
/// How sparse a BlockFFN model's layers ran (Song et al., 2025, §3): token-level sparsity (TLS, the share of
/// blocks a token leaves off) and chunk-level sparsity (CLS, the share of blocks that no token of a chunk
/// uses — what the chunk-sparse kernel skips), per layer. CLS is kept for the passes as they ran (one
/// decoding token, a verified draft, a prefill tile) and for consecutive chunks of 8 rows within passes of
/// at least 8, the paper's chunk size, so a speed can be read against the sparsity it met.
/// </summary>
public sealed class BlockSparsity(int layers, int blocks)
{
    private readonly long[] _tokens = new long[layers], _active = new long[layers], _passes = new long[layers], _passUnion = new long[layers],
        _chunks8 = new long[layers], _union8 = new long[layers];
    private readonly bool[] _seen = new bool[blocks], _seen8 = new bool[blocks];

    public const int Chunk = 8;

    public int Layers => layers;

    public int Blocks => blocks;

    /// <summary>Counts one pass of <paramref name="rows"/> rows through layer <paramref name="layer"/> ([rows, blocks] scores, 0 = off).</summary>
    public void Record(int layer, ReadOnlySpan<float> scores, int rows, int blockCount)
    {
        Array.Clear(_seen);
        int union = 0;
        for (int t = 0; t < rows; t++)
        {
            if (t % Chunk == 0)
                Array.Clear(_seen8);
            int union8 = 0;
            var row = scores.Slice(t * blockCount, blockCount);
            for (int e = 0; e < blockCount; e++)
            {
                if (row[e] == 0f)
                    continue;
                _active[layer]++;
                if (!_seen[e])
                {
                    _seen[e] = true;
                    union++;
                }
                _seen8[e] = true;
            }
            if (t % Chunk == Chunk - 1)
            {
                foreach (bool on in _seen8)
                    union8 += on ? 1 : 0;
                _chunks8[layer]++;
                _union8[layer] += union8;
            }
        }
        _tokens[layer] += rows;
        _passes[layer]++;
        _passUnion[layer] += union;
    }

    /// <summary>TLS of a layer: 1 − active blocks per token / blocks (NaN before any token).</summary>
    public double TokenLevel(int layer) => 1 - _active[layer] / ((double)_tokens[layer] * blocks);

    /// <summary>CLS of a layer over its passes as they ran: 1 − blocks in a pass's union / blocks.</summary>
    public double PassLevel(int layer) => 1 - _passUnion[layer] / ((double)_passes[layer] * blocks);

    /// <summary>CLS of a layer over chunks of 8 consecutive rows (NaN when no pass had 8).</summary>
    public double ChunkLevel(int layer) => 1 - _union8[layer] / ((double)_chunks8[layer] * blocks);

    /// <summary>Rows per pass on average (the chunk size <see cref="PassLevel"/> is measured at).</summary>
    public double RowsPerPass(int layer) => _tokens[layer] / (double)_passes[layer];

    private static double Mean(Func<int, double> f, int layers) => Enumerable.Range(0, layers).Select(f).Where(double.IsFinite).DefaultIfEmpty(double.NaN).Average();

    /// <summary>Means over the layers: "TLS 0.81, CLS(8) 0.70, CLS(pass of 1 rows) 0.81" ("n/a" where no pass had 8 rows).</summary>
    public string Describe()
    {
        static string Share(double v) => double.IsFinite(v) ? v.ToString("0.00", System.Globalization.CultureInfo.InvariantCulture) : "n/a";
        return $"TLS {Share(Mean(TokenLevel, layers))}, CLS(8) {Share(Mean(ChunkLevel, layers))}, "
            + $"CLS(pass of {Mean(RowsPerPass, layers).ToString("0.#", System.Globalization.CultureInfo.InvariantCulture)} rows) {Share(Mean(PassLevel, layers))}";
    }

    /// <summary>Per layer, one line each.</summary>
    public IEnumerable<string> PerLayer() => Enumerable.Range(0, layers).Select(l =>
        $"layer {l}: TLS {TokenLevel(l):0.000}, CLS(8) {ChunkLevel(l):0.000}, CLS(pass) {PassLevel(l):0.000}");

    /// <summary>Adds another counter's counts (of a model of the same shape) to these.</summary>
    public void Add(BlockSparsity other)
    {
        if (other.Layers != layers || other.Blocks != blocks)
            throw new ArgumentException($"sparsity of {other.Layers} layers × {other.Blocks} blocks cannot add to {layers} × {blocks}");
        for (int l = 0; l < layers; l++)
        {
            _tokens[l] += other._tokens[l];
            _active[l] += other._active[l];
            _passes[l] += other._passes[l];
            _passUnion[l] += other._passUnion[l];
            _chunks8[l] += other._chunks8[l];
            _union8[l] += other._union8[l];
        }
    }

    public void Reset()
    {
        foreach (var a in new[] { _tokens, _active, _passes, _passUnion, _chunks8, _union8 })
            Array.Clear(a);
    }
}
