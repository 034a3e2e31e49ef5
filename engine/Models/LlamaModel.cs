using Engine.Backends;
using Engine.Cache;

namespace Engine.Models;

/// <summary>One sequence's share of a <see cref="LlamaModel.ForwardBatch"/>: its next <paramref name="Count"/> tokens, and whether its last row's logits are wanted.</summary>
public readonly record struct BatchSegment(KvSequence Sequence, int Count, bool Logits)
{
    /// <summary>
    /// With <see cref="Logits"/>: how many of the last rows give logits (1: the next token's; more when
    /// the rows after the first are draft tokens under verification).
    /// </summary>
    public int LogitRows { get; init; } = 1;
}

/// <summary>
/// The decoder-only transformer of the Llama family and its relatives. <see cref="Forward"/> reads top to
/// bottom in the order of the equations; each step is one <see cref="Backend"/> operation, so the same
/// code runs on the CPU and on CUDA. This file holds the pass itself (embedding, layers, LM head); the
/// layers are built from shared blocks, one file per layout:
/// <list type="bullet">
/// <item><c>LlamaModel.Attention.cs</c> — self-attention, shared by every family.</item>
/// <item><c>LlamaModel.PreNorm.cs</c> — x += f(norm(x)): Llama (Touvron et al., 2023), Mistral, Qwen2/Qwen3,
/// Granite 3, SmolLM3, Phi-3.</item>
/// <item><c>LlamaModel.Moe.cs</c> — the mixture-of-experts FFN of Mixtral and Qwen-MoE.</item>
/// <item><c>LlamaModel.Mla.cs</c> — multi-head latent attention's projections (MiniCPM/BlockFFN, DeepSeek-V2).</item>
/// <item><c>LlamaModel.BlockFfn.cs</c> — BlockFFN's router and chunk-sparse FFN.</item>
/// <item><c>LlamaModel.NormedOutput.cs</c> — x += norm(f(·)): OLMo 2 (post-norm) and Gemma 2/3 (norms on
/// both sides).</item>
/// </list>
/// </summary>
public sealed partial class LlamaModel : IDisposable
{
    private readonly LlamaWeights _w;
    private readonly RopeTable _rope;
    private readonly RopeTable? _localRope;
    private readonly SlidingWindow _window = new();
    private readonly float _attentionScale;
    private Scratch? _scratch;
    private int[] _localRows = [];

    public LlamaModel(ModelConfig config, LlamaWeights weights, Backend backend, int maxBatch = 256)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxBatch, 1);
        Config = config;
        Backend = backend;
        MaxBatch = maxBatch;
        _w = weights;
        _rope = new RopeTable(config);
        // Gemma 3's windowed layers rotate with their own base and without the global layers' scaling
        if (config.LocalRopeTheta > 0)
            _localRope = new RopeTable(config with { RopeTheta = config.LocalRopeTheta, RopeFreqScale = 1f, RopeFreqFactors = null });
        _attentionScale = config.AttentionScale > 0 ? config.AttentionScale : 1f / MathF.Sqrt(config.HeadDim);
        if (config.BlockFfn is { } blocks)
            BlockSparsity = new BlockSparsity(config.Layers, blocks.Blocks);
    }

    public ModelConfig Config { get; }

    public Backend Backend { get; }

    public bool TiedOutput => _w.TiedOutput;

    /// <summary>Most tokens one pass computes; longer causal batches are split into passes of this size.</summary>
    public int MaxBatch { get; }

    /// <summary>
    /// Called after each named step with (name, layer or -1, activation) when set — llama.cpp's
    /// <c>cb(cur, "attn_norm", il)</c>: diffing against a reference becomes a flag, not a debugging session.
    /// </summary>
    public Action<string, int, Activation>? Trace { get; set; }

    /// <summary>
    /// A KV cache for this model whose sequences hold up to <paramref name="maxTokens"/> tokens each, with a
    /// pool for <paramref name="sequences"/> such sequences at once; with <paramref name="layers"/> &gt; 0,
    /// only for the first that many layers (a layer-skip draft's cache).
    /// </summary>
    /// <param name="poolTokens">The pool's size in tokens when smaller than <paramref name="sequences"/> whole contexts (0: that much); at least one context.</param>
    public KvCache CreateKvCache(int maxTokens, int blockSize = 32, int layers = 0, int sequences = 1, int poolTokens = 0)
    {
        if (layers < 0 || layers > Config.Layers)
            throw new ArgumentOutOfRangeException(nameof(layers), $"layer count {layers} must be 0 (all) or 1..{Config.Layers}");
        ArgumentOutOfRangeException.ThrowIfLessThan(sequences, 1);
        var layout = new KvLayout(layers > 0 ? layers : Config.Layers, Config.KvHeads, Config.HeadDim, blockSize);
        ArgumentOutOfRangeException.ThrowIfNegative(poolTokens);
        int context = (maxTokens + blockSize - 1) / blockSize * blockSize;
        int pool = checked(context * sequences);
        if (poolTokens > 0)
            pool = Math.Clamp((poolTokens + blockSize - 1) / blockSize * blockSize, context, pool);
        // When every layer attends through the window (Mistral 7B v0.1, Phi-3), a sequence keeps only the
        // blocks the window still sees, plus a pass's worth for rollbacks, and the pool is sized for that:
        // memory follows the window, not the context. (Gemma's global layers see everything.)
        var sliding = Enumerable.Range(0, layout.Layers).Select(Config.IsSliding).ToArray();
        int windowPool = Config.SlidingWindow > 0
            ? checked(Math.Min(WindowPoolTokens(Config.SlidingWindow, MaxBatch, blockSize), pool / sequences) * sequences) : 0;
        if (Config.SlidingWindow > 0 && sliding.All(w => w))
        {
            var windowed = new KvCache(Backend, layout, maxTokens, windowPool);
            windowed.KeepOnlyWindow(Config.SlidingWindow, MaxBatch);
            return windowed;
        }
        // Windowed layers between global ones (Gemma 2: half, Gemma 3: five of six): the windowed layers
        // in a cache of their own that follows the window, the global ones over the whole context.
        if (Config.SlidingWindow > 0 && sliding.Any(w => w))
        {
            return KvCache.Hybrid(Backend, layout.Layers, Config.KvHeads, Config.HeadDim, blockSize, maxTokens, sliding,
                Config.SlidingWindow, MaxBatch, windowPool, pool);
        }
        return new KvCache(Backend, layout, maxTokens, pool);
    }

    /// <summary>
    /// The pool a sliding-window sequence needs: after a commit it holds the blocks of its last
    /// window + slack − 1 tokens (two partial blocks at the ends), and a pass reserves up to slack more.
    /// </summary>
    public static int WindowPoolTokens(int window, int slack, int blockSize) => window + 2 * slack + 3 * blockSize;

    /// <summary>
    /// Runs a batch of tokens through the model and appends their K/V to <paramref name="sequence"/>.
    /// Row i is token <paramref name="tokens"/>[i] at position <paramref name="positions"/>[i]; it attends
    /// to the whole cached prefix and to the batch rows <paramref name="mask"/> allows. Logits (and, if
    /// <paramref name="hidden"/> is not empty, the final hidden states after the output norm — what the
    /// LM head reads) are written for the rows listed in <paramref name="outputRows"/>, in that order.
    /// </summary>
    /// <param name="logits">outputRows.Length × vocab floats.</param>
    /// <param name="hidden">Empty, or outputRows.Length × dim floats.</param>
    /// <param name="layers">
    /// 0 for the whole model; otherwise only the first <paramref name="layers"/> layers run before the
    /// output norm and head — the early exit of layer-skip self-drafting (the sequence's cache needs
    /// at least that many layers).
    /// </param>
    /// <param name="batchInvariant">
    /// Compute every row exactly as a one-token pass would (see <see cref="Backend.MatMul(Activation, ReadOnlySpan{MatMulTarget}, bool)"/>
    /// and <see cref="Backend.Attention"/>): speculative verification then reproduces plain decoding
    /// bit for bit, at the price of the matrix kernels' speed.
    /// </param>
    public void Forward(KvSequence sequence, ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, AttentionMask mask,
        ReadOnlySpan<int> outputRows, Span<float> logits, Span<float> hidden = default, int layers = 0, bool batchInvariant = false)
    {
        if (logits.Length != outputRows.Length * Config.VocabSize)
            throw new ArgumentException($"logits need {outputRows.Length} × {Config.VocabSize} floats, got {logits.Length}", nameof(logits));
        Run(sequence, tokens, positions, mask, outputRows, logits, hidden, layers, batchInvariant, onDevice: false);
    }

    /// <summary>
    /// <see cref="Forward"/> that leaves the logits of <paramref name="outputRows"/> on the backend instead
    /// of downloading them: returns them as an activation [outputRows.Length, vocab], valid until the next
    /// pass. What decoding on a GPU uses, so that sampling, argmax and acceptance run where the logits are
    /// and only token ids cross to the host. The output rows must lie in the pass's last
    /// <see cref="MaxBatch"/> tokens (a decoding step or a verified tree always does).
    /// </summary>
    public Activation ForwardOnDevice(KvSequence sequence, ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, AttentionMask mask,
        ReadOnlySpan<int> outputRows, bool batchInvariant = false)
    {
        int lastStart = (tokens.Length - 1) / MaxBatch * MaxBatch;
        foreach (int r in outputRows)
        {
            if (r < lastStart && r >= 0)
                throw new ArgumentOutOfRangeException(nameof(outputRows), $"output row {r} is not in the last pass of {MaxBatch} tokens (rows {lastStart}..)");
        }
        if (outputRows.IsEmpty)
            throw new ArgumentException("a pass that keeps logits on the device needs at least one output row", nameof(outputRows));
        Run(sequence, tokens, positions, mask, outputRows, default, default, 0, batchInvariant, onDevice: true);
        return _deviceLogits;
    }

    private Activation _deviceLogits;

    private void Run(KvSequence sequence, ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, AttentionMask mask,
        ReadOnlySpan<int> outputRows, Span<float> logits, Span<float> hidden, int layers, bool batchInvariant, bool onDevice)
    {
        int n = tokens.Length;
        int layerCount = layers == 0 ? Config.Layers : layers;
        if (layers < 0 || layers > Config.Layers)
            throw new ArgumentOutOfRangeException(nameof(layers), $"layer count {layers} must be 0 (all) or 1..{Config.Layers}");
        if (sequence.Cache.ModelLayers < layerCount)
            throw new ArgumentException($"the sequence's cache holds {sequence.Cache.ModelLayers} layers, the pass runs {layerCount}", nameof(sequence));
        if (n == 0)
            throw new ArgumentException("a forward pass needs at least one token", nameof(tokens));
        if (positions.Length != n)
            throw new ArgumentException($"{n} tokens but {positions.Length} positions", nameof(positions));
        if (!mask.IsCausal && mask.Size != n)
            throw new ArgumentException($"the attention mask is for {mask.Size} tokens, the batch has {n}", nameof(mask));
        if (!mask.IsCausal && n > MaxBatch)
            throw new ArgumentException($"a batch with a non-causal mask is limited to {MaxBatch} tokens, got {n}", nameof(mask));
        if (!hidden.IsEmpty && hidden.Length != outputRows.Length * Config.Dim)
            throw new ArgumentException($"hidden states need {outputRows.Length} × {Config.Dim} floats, got {hidden.Length}", nameof(hidden));
        for (int i = 0; i < n; i++)
        {
            if ((uint)tokens[i] >= (uint)Config.VocabSize)
                throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {tokens[i]} is outside the vocabulary (0..{Config.VocabSize - 1})");
            if (positions[i] < 0)
                throw new ArgumentOutOfRangeException(nameof(positions), $"position {positions[i]} is negative");
        }
        for (int k = 0; k < outputRows.Length; k++)
        {
            if ((uint)outputRows[k] >= (uint)n)
                throw new ArgumentOutOfRangeException(nameof(outputRows), $"output row {outputRows[k]} is outside the batch of {n}");
        }

        // A causal batch can be split into passes: later passes see earlier ones as cached prefix.
        for (int start = 0; start < n; start += MaxBatch)
        {
            int count = Math.Min(MaxBatch, n - start);
            if (_localRows.Length < outputRows.Length)
                _localRows = new int[outputRows.Length];
            int outputs = 0;
            foreach (int r in outputRows)
            {
                if (r >= start && r < start + count)
                    _localRows[outputs++] = r - start;
            }
            Pass(sequence, tokens.Slice(start, count), positions.Slice(start, count), mask,
                _localRows.AsSpan(0, outputs), logits, hidden, outputRows, start, layerCount, batchInvariant, onDevice);
        }
    }

    private void Pass(KvSequence sequence, ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, AttentionMask mask,
        ReadOnlySpan<int> localRows, Span<float> logits, Span<float> hidden, ReadOnlySpan<int> outputRows, int start, int layerCount, bool exact,
        bool onDevice)
    {
        var c = Config;
        var b = Backend;
        int n = tokens.Length;
        var s = _scratch ??= new Scratch(b, c, MaxBatch);
        sequence.Reserve(n);
        Span<Segment> one = [new Segment(sequence, 0, n, sequence.Length)];
        Layers(one, tokens, positions, mask, layerCount, exact);
        sequence.Commit(n);
        var h = s.H.WithRows(n);

        if (localRows.IsEmpty)
            return;
        // LM head, only for the rows asked for (h holds every row after the output norm)
        var rows = s.Rows.WithRows(localRows.Length);
        var outLogits = s.Logits(localRows.Length);
        b.GatherRows(h, localRows, rows);
        Trace?.Invoke("result_norm", -1, rows);
        b.MatMul(rows, _w.Output, outLogits, exact);
        if (c.LogitScale != 1f)
            b.Scale(outLogits, 1f / c.LogitScale);
        if (c.FinalLogitSoftCap > 0)
            b.SoftCap(outLogits, c.FinalLogitSoftCap);
        Trace?.Invoke("result_output", -1, outLogits);

        if (onDevice)
        {
            _deviceLogits = outLogits;
            return;
        }
        // Scatter this pass's rows to where the caller listed them.
        var hostLogits = s.HostLogits(localRows.Length);
        b.Download(outLogits, hostLogits);
        var hostHidden = hidden.IsEmpty ? default : s.HostHidden(localRows.Length);
        if (!hidden.IsEmpty)
            b.Download(rows, hostHidden);
        int o = 0;
        for (int kk = 0; kk < outputRows.Length; kk++)
        {
            int r = outputRows[kk] - start;
            if (r < 0 || r >= n)
                continue;
            hostLogits.Slice(o * c.VocabSize, c.VocabSize).CopyTo(logits.Slice(kk * c.VocabSize, c.VocabSize));
            if (!hidden.IsEmpty)
                hostHidden.Slice(o * c.Dim, c.Dim).CopyTo(hidden.Slice(kk * c.Dim, c.Dim));
            o++;
        }
    }

    /// <summary>
    /// The layers of one pass (embedding to output norm, leaving the normed rows in the scratch's H) over
    /// <paramref name="segments"/>: consecutive runs of rows, each a sequence whose slots are reserved.
    /// </summary>
    private void Layers(ReadOnlySpan<Segment> segments, ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, AttentionMask mask,
        int layerCount, bool exact)
    {
        var c = Config;
        var b = Backend;
        int n = tokens.Length;
        var s = _scratch!;
        if (c.SlidingWindow > 0)
            _window.Set(c.SlidingWindow, positions, mask);
        var step = new Step
        {
            X = s.X.WithRows(n), H = s.H.WithRows(n), Q = s.Q.WithRows(n), K = s.K.WithRows(n), V = s.V.WithRows(n),
            Att = s.Att.WithRows(n), Proj = s.Proj.WithRows(n), Gate = s.Gate.WithRows(n), Up = s.Up.WithRows(n),
            Positions = positions, Mask = mask, Exact = exact, Segments = segments,
        };
        var x = step.X;
        var h = step.H;

        // token embedding (times Granite's multiplier, or Gemma's √dim), and for pre-norm layers the first
        // layer's attention norm (each later norm ends the block before it)
        b.Embed(_w.TokenEmbedding, tokens, x);
        if (c.EmbeddingScale != 1f)
            b.Scale(x, c.EmbeddingScale);
        Trace?.Invoke("token_embd", -1, x);
        if (c.Layout == BlockLayout.PreNorm)
            b.RmsNorm(x, layerCount > 0 ? _w.Layers[0].AttnNorm! : _w.OutputNorm, c.RmsNormEps, h);

        for (int l = 0; l < layerCount; l++)
        {
            if (c.Layout == BlockLayout.PreNorm)
                PreNormLayer(step, l, l + 1 < layerCount ? _w.Layers[l + 1].AttnNorm! : _w.OutputNorm);
            else
                NormedOutputLayer(step, l);
        }
        if (c.Layout != BlockLayout.PreNorm)
            b.RmsNorm(x, _w.OutputNorm, c.RmsNormEps, h); // the output norm (pre-norm layers end with it fused)
    }

    /// <summary>
    /// Continuous batching (Yu et al., "Orca: A Distributed Serving System for Transformer-Based Generative
    /// Models", OSDI 2022): one pass over several sequences at once — decoders' next tokens and chunks of
    /// prompts side by side — so the weights stream once for all of them. Every matrix product, norm and
    /// FFN runs over all rows together; only attention runs per sequence, over its own cache. Segment j
    /// takes the next <see cref="BatchSegment.Count"/> tokens of <paramref name="tokens"/>, appended to its
    /// sequence at the positions that follow it (causal). <paramref name="logits"/> receives, in order,
    /// the logits of the last <see cref="BatchSegment.LogitRows"/> rows of each segment that asks for them.
    /// </summary>
    /// <param name="batchInvariant">As in <see cref="Forward"/>: each row computed exactly as alone.</param>
    public void ForwardBatch(ReadOnlySpan<BatchSegment> segments, ReadOnlySpan<int> tokens, Span<float> logits, bool batchInvariant = false)
    {
        int n = tokens.Length, outputs = 0, total = 0;
        if (segments.IsEmpty)
            throw new ArgumentException("a batch needs at least one sequence", nameof(segments));
        if (n > MaxBatch)
            throw new ArgumentException($"a batch of {n} tokens exceeds the model's {MaxBatch} per pass", nameof(tokens));
        for (int j = 0; j < segments.Length; j++)
        {
            var g = segments[j];
            if (g.Count < 1)
                throw new ArgumentException($"segment {j} has {g.Count} tokens; each needs at least one", nameof(segments));
            if (g.Sequence.Cache.ModelLayers != Config.Layers)
                throw new ArgumentException($"segment {j}'s cache holds {g.Sequence.Cache.ModelLayers} layers, the model has {Config.Layers}", nameof(segments));
            for (int k = 0; k < j; k++)
            {
                if (ReferenceEquals(segments[k].Sequence, g.Sequence))
                    throw new ArgumentException($"segments {k} and {j} are the same sequence", nameof(segments));
            }
            total += g.Count;
            if (g.Logits)
            {
                if (g.LogitRows < 1 || g.LogitRows > g.Count)
                    throw new ArgumentException($"segment {j} asks for logits of {g.LogitRows} rows of its {g.Count}", nameof(segments));
                outputs += g.LogitRows;
            }
        }
        if (total != n)
            throw new ArgumentException($"the segments hold {total} tokens, the batch has {n}", nameof(tokens));
        if (logits.Length != outputs * Config.VocabSize)
            throw new ArgumentException($"logits need {outputs} × {Config.VocabSize} floats, got {logits.Length}", nameof(logits));
        foreach (int t in tokens)
        {
            if ((uint)t >= (uint)Config.VocabSize)
                throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {t} is outside the vocabulary (0..{Config.VocabSize - 1})");
        }

        var s = _scratch ??= new Scratch(Backend, Config, MaxBatch);
        var list = _segments.Length >= segments.Length ? _segments : _segments = new Segment[Math.Max(segments.Length, 2 * _segments.Length)];
        if (_positions.Length < MaxBatch)
            _positions = new int[MaxBatch];
        if (_localRows.Length < outputs)
            _localRows = new int[Math.Max(outputs, 2 * _localRows.Length)];
        int row = 0, reserved = 0;
        outputs = 0;
        try
        {
            for (; reserved < segments.Length; reserved++)
            {
                var g = segments[reserved];
                g.Sequence.Reserve(g.Count);
                list[reserved] = new Segment(g.Sequence, row, g.Count, g.Sequence.Length);
                for (int i = 0; i < g.Count; i++)
                    _positions[row + i] = g.Sequence.Length + i;
                row += g.Count;
                if (g.Logits)
                {
                    for (int r = row - g.LogitRows; r < row; r++)
                        _localRows[outputs++] = r;
                }
            }
        }
        catch
        {
            for (int j = 0; j < reserved; j++)
                segments[j].Sequence.Truncate(segments[j].Sequence.Length); // give back what was reserved
            throw;
        }
        _batch.Clear();
        _localBatch.Clear();
        var cache = segments[0].Sequence.Cache;
        for (int j = 0; j < segments.Length; j++)
        {
            var g = list[j];
            if (g.Sequence.Cache != cache)
                throw new ArgumentException($"segment {j}'s sequence belongs to another KV cache than segment 0's", nameof(segments));
            _batch.Add(g.Count, g.Prefix, g.Sequence.BlockTable);
            if (g.Sequence.Local is { } local)
                _localBatch.Add(g.Count, g.Prefix, local.BlockTable);
        }
        Layers(list.AsSpan(0, segments.Length), tokens, _positions.AsSpan(0, n), AttentionMask.Causal, Config.Layers, batchInvariant);
        foreach (var g in segments)
            g.Sequence.Commit(g.Count);
        if (outputs == 0)
            return;
        var rows = s.Rows.WithRows(outputs);
        var outLogits = s.Logits(outputs);
        Backend.GatherRows(s.H.WithRows(n), _localRows.AsSpan(0, outputs), rows);
        Backend.MatMul(rows, _w.Output, outLogits, batchInvariant);
        if (Config.LogitScale != 1f)
            Backend.Scale(outLogits, 1f / Config.LogitScale);
        if (Config.FinalLogitSoftCap > 0)
            Backend.SoftCap(outLogits, Config.FinalLogitSoftCap);
        Backend.Download(outLogits, logits);
    }

    private Segment[] _segments = [];
    private readonly SequenceBatch _batch = new(), _localBatch = new();
    private int[] _positions = [];

    /// <summary>Rows [Row, Row + Count) of a pass belong to Sequence, whose cached prefix was Prefix tokens long.</summary>
    private readonly record struct Segment(KvSequence Sequence, int Row, int Count, int Prefix);

    public void Dispose()
    {
        _scratch?.Dispose();
        _moe?.Dispose();
        _blocks?.Dispose();
        _mla?.Dispose();
        _w.Dispose();
    }

    /// <summary>Activation buffers for one pass of up to MaxBatch tokens, allocated once and reused.</summary>
    private sealed class Scratch : IDisposable
    {
        private readonly List<DeviceBuffer> _buffers = [];
        private float[] _hostLogits = [];
        private float[] _hostHidden = [];

        public Scratch(Backend b, ModelConfig c, int rows)
        {
            Activation Make(int cols)
            {
                var buffer = b.Allocate((long)rows * cols);
                _buffers.Add(buffer);
                return new Activation(buffer, rows, cols);
            }
            X = Make(c.Dim);
            H = Make(c.Dim);
            Q = Make(c.QDim);
            K = Make(c.KvDim);
            V = Make(c.KvDim);
            Att = Make(c.QDim);
            Proj = Make(c.Dim);
            Gate = Make(c.MaxFfnDim);
            Up = Make(c.MaxFfnDim);
            Rows = Make(c.Dim);
            _make = Make;
            _backend = b;
            VocabSize = c.VocabSize;
            Dim = c.Dim;
        }

        public Activation X { get; }
        public Activation H { get; }
        public Activation Q { get; }
        public Activation K { get; }
        public Activation V { get; }
        public Activation Att { get; }
        public Activation Proj { get; }
        public Activation Gate { get; }
        public Activation Up { get; }
        public Activation Rows { get; }

        // A continuous batch's per-sequence attention rows, made on first use (a single sequence never needs them).
        public Activation SegQ => _segQ ??= _make(Q.Cols);
        public Activation SegK => _segK ??= _make(K.Cols);
        public Activation SegV => _segV ??= _make(V.Cols);
        public Activation SegAtt => _segAtt ??= _make(Att.Cols);

        private readonly Func<int, Activation> _make;
        private Activation? _segQ, _segK, _segV, _segAtt;

        /// <summary>
        /// Logits for <paramref name="rows"/> output rows. Sized by the most rows asked for so far, not by
        /// the batch: a prompt wants one row, and rows × vocabulary floats for a whole batch would be
        /// tens of MiB of resident memory that decoding never touches.
        /// </summary>
        public Activation Logits(int rows)
        {
            if (_logits is null || _logits.Length < (long)rows * VocabSize)
            {
                _logits?.Dispose();
                // batches of 8+ rows to a whole 16: the CPU's matrix kernels then take a batch of 9-15 rows
                // padded to 16 (CpuBackend.MatMul) instead of falling back to the row kernels
                long room = rows >= 8 ? (rows + 15) / 16 * 16 : rows;
                _logits = _backend.Allocate(room * VocabSize);
            }
            return new Activation(_logits, rows, VocabSize);
        }

        private readonly Backend _backend;
        private DeviceBuffer? _logits;
        private int VocabSize { get; }
        private int Dim { get; }

        public Span<float> HostLogits(int rows) => Grow(ref _hostLogits, rows * VocabSize);

        public Span<float> HostHidden(int rows) => Grow(ref _hostHidden, rows * Dim);

        private static Span<float> Grow(ref float[] array, int length)
        {
            if (array.Length < length)
                array = new float[length];
            return array.AsSpan(0, length);
        }

        public void Dispose()
        {
            foreach (var buffer in _buffers)
                buffer.Dispose();
            _logits?.Dispose();
        }
    }
}
