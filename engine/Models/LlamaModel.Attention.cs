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
        public required ReadOnlySpan<int> Table { get; init; }
        public required KvStore Store { get; init; }
        /// <summary>The cache, which says where each layer's K/V live (<see cref="KvCache.Place"/>).</summary>
        public required KvCache Cache { get; init; }
        /// <summary>The windowed layers' block table and store when the cache keeps them apart (<see cref="KvCache.Local"/>).</summary>
        public ReadOnlySpan<int> LocalTable { get; init; }
        public KvStore? LocalStore { get; init; }
        public required int Prefix { get; init; }
        public required AttentionMask Mask { get; init; }
        /// <summary>Batch-invariant arithmetic (exact speculative verification).</summary>
        public required bool Exact { get; init; }
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
        b.MatMul(input, [new(w.Wq, s.Q) { Bias = w.Bq }, new(w.Wk, s.K) { Bias = w.Bk }, new(w.Wv, s.V) { Bias = w.Bv }], s.Exact);
        if (w.QNorm is not null)
        {
            b.RmsNorm(s.Q.AsHeads(w.QNorm.Length), w.QNorm, c.RmsNormEps, s.Q.AsHeads(w.QNorm.Length));
            b.RmsNorm(s.K.AsHeads(w.KNorm!.Length), w.KNorm, c.RmsNormEps, s.K.AsHeads(w.KNorm.Length));
            Trace?.Invoke("q_norm", l, s.Q);
            Trace?.Invoke("k_norm", l, s.K);
        }
        bool sliding = c.IsSliding(l);
        // this layer's K/V: in the cache's store, or (a windowed layer of a hybrid cache) in its local part
        var (local, at) = s.Cache.Place(l);
        var store = local ? s.LocalStore! : s.Store;
        var table = local ? s.LocalTable : s.Table;
        if (c.UsesRope(l))
            b.RopeStoreKv(s.Q, s.K, s.V, c.Heads, c.KvHeads, s.Positions, sliding ? _localRope ?? _rope : _rope, store, at, table, s.Prefix);
        else // a NoPE layer (SmolLM3): positions reach it only through the causal mask
            b.StoreKv(store, at, table, s.Prefix, s.K, s.V);
        Trace?.Invoke("q_rope", l, s.Q);
        Trace?.Invoke("k_rope", l, s.K);
        if (sliding)
            b.Attention(s.Q, store, at, table, s.Prefix, _window.Mask, c.Heads, _attentionScale, s.Att, s.Exact, c.AttentionSoftCap, _window.Starts);
        else
            b.Attention(s.Q, store, at, table, s.Prefix, s.Mask, c.Heads, _attentionScale, s.Att, s.Exact, c.AttentionSoftCap);
        Trace?.Invoke("attn_out", l, s.Att);
    }
}
