using Engine.Backends;
using Engine.Cache;

namespace Engine.Models;

public sealed partial class LlamaModel
{
    /// <summary>
    /// What every layer of one pass shares: its activations (the residual stream X, the normed input H,
    /// q/k/v, the attention output, the projection back, the FFN's gate and up — each [n, ·]), where the
    /// pass's tokens go in the KV cache, and how they see each other.
    /// </summary>
    private readonly ref struct Step
    {
        public required Activation X { get; init; }
        public required Activation H { get; init; }
        public required Activation Q { get; init; }
        public required Activation K { get; init; }
        public required Activation V { get; init; }
        public required Activation Att { get; init; }
        public required Activation Proj { get; init; }
        public required Activation Gate { get; init; }
        public required Activation Up { get; init; }
        public required ReadOnlySpan<int> Positions { get; init; }
        public required AttentionMask Mask { get; init; }
        /// <summary>Batch-invariant arithmetic (exact speculative verification).</summary>
        public required bool Exact { get; init; }
        /// <summary>
        /// The sequences whose rows the pass holds (one, unless it is a continuous batch): everything but
        /// attention runs over all rows at once; attention runs per sequence.
        /// </summary>
        public required ReadOnlySpan<Segment> Segments { get; init; }
    }

    /// <summary>
    /// Self-attention of layer <paramref name="l"/> (Vaswani et al., 2017), leaving its output in
    /// <c>s.Att</c>: q, k, v = W·input (+ Qwen2's biases); q and k RMS-normalized where the family does it
    /// (per head: Qwen3, Gemma 3; whole: OLMo 2); RoPE (none in SmolLM3's NoPE layers; Gemma 3's windowed
    /// layers with their own base); k and v into the cache; softmax(q·kᵀ·scale)·v over the keys the row
    /// sees — within the sliding window in windowed layers, scores soft-capped in Gemma 2.
    /// </summary>
    private void SelfAttention(in Step s, int l, Activation input)
    {
        var c = Config;
        var b = Backend;
        var w = _w.Layers[l];
        if (w.Mla is { } mla)
            MlaProjections(s, input, mla);
        else
            b.MatMul(input, [new(w.Wq!, s.Q) { Bias = w.Bq }, new(w.Wk!, s.K) { Bias = w.Bk }, new(w.Wv!, s.V) { Bias = w.Bv }], s.Exact);
        if (w.QNorm is not null)
        {
            b.RmsNorm(s.Q.AsHeads(w.QNorm.Length), w.QNorm, c.RmsNormEps, s.Q.AsHeads(w.QNorm.Length));
            b.RmsNorm(s.K.AsHeads(w.KNorm!.Length), w.KNorm, c.RmsNormEps, s.K.AsHeads(w.KNorm.Length));
            Trace?.Invoke("q_norm", l, s.Q);
            Trace?.Invoke("k_norm", l, s.K);
        }
        if (s.Segments.Length == 1)
        {
            AttendCache(s, l, s.Segments[0], s.Q, s.K, s.V, s.Att, s.Positions, s.Mask, _window.Starts);
        }
        else
        {
            // A continuous batch: RoPE over every row at its own position, then each sequence's K/V into
            // its own slots and its rows' attention over its own cache — one backend call each.
            bool sliding = c.IsSliding(l);
            var first = s.Segments[0].Sequence.Cache;
            var (local, at) = first.Place(l);
            var store = local ? first.Local!.Store : first.Store;
            var batch = local ? _localBatch : _batch;
            if (c.UsesRope(l))
                b.RopeStoreKvBatch(s.Q, s.K, s.V, c.Heads, c.KvHeads, s.Positions, sliding ? _localRope ?? _rope : _rope, store, at, batch);
            else
                b.StoreKvBatch(store, at, batch, s.K, s.V);
            Trace?.Invoke("q_rope", l, s.Q);
            Trace?.Invoke("k_rope", l, s.K);
            b.AttentionBatch(s.Q, store, at, batch, c.Heads, _attentionScale, s.Att, s.Exact, c.AttentionSoftCap, sliding ? _window.Starts : default);
        }
        Trace?.Invoke("attn_out", l, s.Att);
    }

    /// <summary>
    /// RoPE, the cache write and attention for one sequence's rows: q/k/v → <paramref name="att"/>, with
    /// <paramref name="windowStarts"/> the rows' first visible slots in a windowed layer.
    /// </summary>
    private void AttendCache(in Step s, int l, Segment g, Activation q, Activation k, Activation v, Activation att,
        ReadOnlySpan<int> positions, AttentionMask mask, ReadOnlySpan<int> windowStarts)
    {
        var c = Config;
        var b = Backend;
        bool sliding = c.IsSliding(l);
        // this layer's K/V: in the cache's store, or (a windowed layer of a hybrid cache) in its local part
        var (local, at) = g.Sequence.Cache.Place(l);
        var store = local ? g.Sequence.Cache.Local!.Store : g.Sequence.Cache.Store;
        var table = local ? g.Sequence.Local!.BlockTable : g.Sequence.BlockTable;
        if (c.UsesRope(l))
            b.RopeStoreKv(q, k, v, c.Heads, c.KvHeads, positions, sliding ? _localRope ?? _rope : _rope, store, at, table, g.Prefix);
        else // a NoPE layer (SmolLM3): positions reach it only through the causal mask
            b.StoreKv(store, at, table, g.Prefix, k, v);
        Trace?.Invoke("q_rope", l, q);
        Trace?.Invoke("k_rope", l, k);
        if (sliding)
            b.Attention(q, store, at, table, g.Prefix, _window.Mask, c.Heads, _attentionScale, att, s.Exact, c.AttentionSoftCap, windowStarts);
        else
            b.Attention(q, store, at, table, g.Prefix, mask, c.Heads, _attentionScale, att, s.Exact, c.AttentionSoftCap);
    }
}
