using Engine.Backends;
using Engine.Cache;

namespace Engine.Models;

/// <summary>
/// The Llama-family decoder (Touvron et al., "LLaMA: Open and Efficient Foundation Language Models",
/// 2023; "Llama 2", 2023) — also Mistral and Qwen2, which differ only in hyper-parameters, RoPE
/// ordering and q/k/v biases, and Qwen3 (Qwen Team, "Qwen3 Technical Report", 2025), which adds an
/// RMSNorm over each head of q and k before RoPE, Granite 3, which scales four places, and SmolLM3
/// (Hugging Face, 2025), whose every fourth layer applies no RoPE. OLMo 2 (OLMo Team, "2 OLMo 2
/// Furious", 2024) moves the norms to the block outputs (<see cref="ModelConfig.PostNorm"/>). <see cref="Forward"/> reads top to bottom in the order of the equations;
/// each step is one <see cref="Backend"/> operation, so the same code runs on the CPU and on CUDA.
/// </summary>
public sealed class LlamaModel : IDisposable
{
    private readonly LlamaWeights _w;
    private readonly RopeTable _rope;
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
        _attentionScale = config.AttentionScale > 0 ? config.AttentionScale : 1f / MathF.Sqrt(config.HeadDim);
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
    /// A KV cache for this model holding up to <paramref name="maxTokens"/> tokens across its sequences;
    /// with <paramref name="layers"/> &gt; 0, only for the first that many layers (a layer-skip draft's cache).
    /// </summary>
    public KvCache CreateKvCache(int maxTokens, int blockSize = 32, int layers = 0)
    {
        if (layers < 0 || layers > Config.Layers)
            throw new ArgumentOutOfRangeException(nameof(layers), $"layer count {layers} must be 0 (all) or 1..{Config.Layers}");
        return new(Backend, new KvLayout(layers > 0 ? layers : Config.Layers, Config.KvHeads, Config.HeadDim, blockSize), maxTokens);
    }

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
        if (sequence.Cache.Layout.Layers < layerCount)
            throw new ArgumentException($"the sequence's cache holds {sequence.Cache.Layout.Layers} layers, the pass runs {layerCount}", nameof(sequence));
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
        var x = s.X.WithRows(n);       // residual stream  [n, dim]
        var h = s.H.WithRows(n);       // normed input      [n, dim]
        var q = s.Q.WithRows(n);       // queries          [n, heads·hd]
        var k = s.K.WithRows(n);       // keys             [n, kvHeads·hd]
        var v = s.V.WithRows(n);       // values           [n, kvHeads·hd]
        var att = s.Att.WithRows(n);   // attention output [n, heads·hd]
        var proj = s.Proj.WithRows(n); // projection back  [n, dim]
        var gate = s.Gate.WithRows(n); // ffn gate         [n, ffn]
        var up = s.Up.WithRows(n);     // ffn up           [n, ffn]

        int prefix = sequence.Length;
        sequence.Reserve(n);
        var table = sequence.BlockTable;
        var store = sequence.Cache.Store;

        // token embedding, and the first layer's attention norm (each later norm ends the block before it)
        b.Embed(_w.TokenEmbedding, tokens, x);
        if (c.EmbeddingScale != 1f)
            b.Scale(x, c.EmbeddingScale);
        Trace?.Invoke("token_embd", -1, x);
        if (!c.PostNorm)
            b.RmsNorm(x, layerCount > 0 ? _w.Layers[0].AttnNorm! : _w.OutputNorm, c.RmsNormEps, h);

        for (int l = 0; l < layerCount; l++)
        {
            var w = _w.Layers[l];
            var input = c.PostNorm ? x : h; // OLMo 2 attends to the residual stream itself
            if (!c.PostNorm)
                Trace?.Invoke("attn_norm", l, h);

            // attention: x += Wo · attention(rope(Wq·norm(x)), rope(Wk·norm(x)), Wv·norm(x))
            b.MatMul(input, [new(w.Wq, q) { Bias = w.Bq }, new(w.Wk, k) { Bias = w.Bk }, new(w.Wv, v) { Bias = w.Bv }], exact);
            if (w.QNorm is not null) // q and k RMS-normalized before RoPE: each head (Qwen3) or whole (OLMo 2)
            {
                b.RmsNorm(q.AsHeads(w.QNorm.Length), w.QNorm, c.RmsNormEps, q.AsHeads(w.QNorm.Length));
                b.RmsNorm(k.AsHeads(w.KNorm!.Length), w.KNorm, c.RmsNormEps, k.AsHeads(w.KNorm.Length));
                Trace?.Invoke("q_norm", l, q);
                Trace?.Invoke("k_norm", l, k);
            }
            if (c.UsesRope(l))
                b.RopeStoreKv(q, k, v, c.Heads, c.KvHeads, positions, _rope, store, l, table, prefix);
            else // a NoPE layer (SmolLM3): positions reach it only through the causal mask
                b.StoreKv(store, l, table, prefix, k, v);
            Trace?.Invoke("q_rope", l, q);
            Trace?.Invoke("k_rope", l, k);
            b.Attention(q, store, l, table, prefix, mask, c.Heads, _attentionScale, att, exact);
            Trace?.Invoke("attn_out", l, att);

            if (c.PostNorm)
            {
                // OLMo 2: x += norm(Wo · attention), then x += norm(W_down · (silu(W_gate·x) ⊙ W_up·x))
                b.MatMul(att, w.Wo, proj, exact);
                b.RmsNorm(proj, w.AttnPostNorm!, c.RmsNormEps, proj);
                b.Add(x, proj);
                Trace?.Invoke("attn_residual", l, x);
                b.GatedFfn(x, w.WGate, w.WUp, gate, up, exact);
                b.MatMul(gate, w.WDown, proj, exact);
                b.RmsNorm(proj, w.FfnPostNorm!, c.RmsNormEps, proj);
                b.Add(x, proj);
                Trace?.Invoke("l_out", l, x);
                continue;
            }
            b.MatMulAddNorm(att, w.Wo, x, proj, w.FfnNorm!, c.RmsNormEps, h, exact, c.ResidualScale); // and the FFN's norm
            Trace?.Invoke("attn_residual", l, x);
            Trace?.Invoke("ffn_norm", l, h);

            // feed-forward: x += W_down · (silu(W_gate·norm(x)) ⊙ W_up·norm(x)), then the next norm:
            // the next layer's attention norm, or after the last layer the output norm
            b.GatedFfn(h, w.WGate, w.WUp, gate, up, exact);
            var nextNorm = l + 1 < layerCount ? _w.Layers[l + 1].AttnNorm! : _w.OutputNorm;
            b.MatMulAddNorm(gate, w.WDown, x, proj, nextNorm, c.RmsNormEps, h, exact, c.ResidualScale);
            Trace?.Invoke("l_out", l, x);
        }
        if (c.PostNorm)
            b.RmsNorm(x, _w.OutputNorm, c.RmsNormEps, h); // the output norm (pre-norm layers end with it fused)
        sequence.Commit(n);

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

    public void Dispose()
    {
        _scratch?.Dispose();
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
            Gate = Make(c.FfnDim);
            Up = Make(c.FfnDim);
            Rows = Make(c.Dim);
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
                _logits = _backend.Allocate((long)rows * VocabSize);
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
