using Engine.Backends;

namespace Engine.Models;

public sealed partial class LlamaModel
{
    /// <summary>
    /// A sparse mixture-of-experts FFN (<see cref="MoeConfig"/>; Jiang et al., "Mixtral of Experts", 2024), from
    /// the normed rows <paramref name="h"/> into <paramref name="dst"/>:
    /// <code>
    /// p = softmax(W_router · h)                            top-k experts E(h) by p (ties: the lower index)
    /// y = Σ_{e ∈ E(h)} w_e · W_down,e (silu(W_gate,e · h) ⊙ W_up,e · h)
    ///     w_e = p_e / Σ_{E(h)} p (renormalized: Mixtral, Qwen3-MoE) or p_e (Qwen2-MoE)
    /// y += sigmoid(w_shared · h) · FFN_shared(h)          (Qwen2-MoE's shared expert)
    /// </code>
    /// The rows are grouped by expert so each expert's weights stream once for the whole pass (the
    /// dense path's matrix kernels run per expert over its rows); the router's few logits per row come to
    /// the host, which picks the experts. Each expert's outputs land in consecutive rows of one buffer,
    /// and <see cref="Backend.MoeCombine"/> sums each token's rows in a fixed order — with
    /// <c>s.Exact</c> a token's result does not depend on which other tokens share the pass.
    /// </summary>
    private void MoeFfn(in Step s, int l, Activation h, Activation dst)
    {
        var b = Backend;
        var c = Config.Moe!;
        var w = _w.Layers[l].Moe!;
        int n = h.Rows, experts = c.Experts, k = c.Used, slots = c.Slots;
        var m = _moe ??= new MoeScratch(b, Config, MaxBatch);

        var logits = m.RouterLogits.WithRows(n);
        if (w.SharedRouter is { } sharedRouter)
            b.MatMul(h, [new MatMulTarget(w.Router, logits), new MatMulTarget(sharedRouter, m.SharedLogits.WithRows(n))], s.Exact);
        else
            b.MatMul(h, w.Router, logits, s.Exact);
        Trace?.Invoke("ffn_moe_logits", l, logits);
        var hostLogits = m.HostLogits.AsSpan(0, n * experts);
        b.Download(logits, hostLogits);
        Route(hostLogits, n, c, m);

        // Each expert over its rows: gathered, the SwiGLU FFN, the output into rows offset[e].. of Y.
        // the step's FFN buffers, seen as [rows, expert width] (they are as wide as the widest FFN)
        var gate = new Activation(s.Gate.Buffer, n, c.ExpertFfn);
        var up = new Activation(s.Up.Buffer, n, c.ExpertFfn);
        for (int e = 0; e < experts; e++)
        {
            int count = m.Count[e], offset = m.Offset[e];
            if (count == 0)
                continue;
            var input = h;
            if (count < n)
            {
                input = m.X.WithRows(count);
                b.GatherRows(h, m.Tokens.AsSpan(offset, count), input);
            }
            b.GatedFfn(input, w.Gate[e], w.Up[e], gate.WithRows(count), up.WithRows(count), s.Exact);
            if (offset == 0)
                b.MatMul(gate.WithRows(count), w.Down[e], m.Y.WithRows(count), s.Exact);
            else
            {
                b.MatMul(gate.WithRows(count), w.Down[e], m.ExpertOut.WithRows(count), s.Exact);
                b.CopyRows(m.ExpertOut, 0, m.Y, offset, count);
            }
        }
        if (w.SharedGate is not null)
        {
            var sharedLogits = m.HostShared.AsSpan(0, n);
            b.Download(m.SharedLogits.WithRows(n), sharedLogits);
            for (int t = 0; t < n; t++)
            {
                m.Slots[t * slots + k] = n * k + t;
                m.Weights[t * slots + k] = 1f / (1f + MathF.Exp(-sharedLogits[t]));
            }
            var sharedGate = new Activation(s.Gate.Buffer, n, c.SharedFfn);
            b.GatedFfn(h, w.SharedGate, w.SharedUp!, sharedGate, new Activation(s.Up.Buffer, n, c.SharedFfn), s.Exact);
            b.MatMul(sharedGate, w.SharedDown!, m.ExpertOut.WithRows(n), s.Exact);
            b.CopyRows(m.ExpertOut, 0, m.Y, n * k, n);
        }
        b.MoeCombine(m.Y.WithRows(n * slots), m.Slots.AsSpan(0, n * slots), m.Weights.AsSpan(0, n * slots), slots, dst);
        Trace?.Invoke("ffn_moe_out", l, dst);
    }

    /// <summary>
    /// Top-k routing on the host: for each token the <see cref="MoeConfig.Used"/> experts of highest logit
    /// (lower index first among equals) and their weights, softmax over all experts or renormalized
    /// over the chosen ones; then the tokens grouped by expert (ascending within each group) and each
    /// (token, j) given the row of Y its expert output lands in.
    /// </summary>
    private static void Route(ReadOnlySpan<float> logits, int n, MoeConfig c, MoeScratch m)
    {
        int experts = c.Experts, k = c.Used, slots = c.Slots;
        Span<int> chosen = m.Chosen.AsSpan(0, n * k);
        Array.Clear(m.Count);
        for (int t = 0; t < n; t++)
        {
            var row = logits.Slice(t * experts, experts);
            float max = float.NegativeInfinity;
            foreach (float x in row)
            {
                if (float.IsNaN(x))
                    throw new InvalidOperationException($"the router's logits hold NaN (token row {t}): the model's weights or input are not finite");
                max = Math.Max(max, x);
            }
            float total = 0f, picked = 0f;
            foreach (float x in row)
                total += MathF.Exp(x - max);
            for (int j = 0; j < k; j++)
            {
                int best = -1;
                for (int e = 0; e < experts; e++)
                {
                    if ((best < 0 || row[e] > row[best]) && chosen.Slice(t * k, j).IndexOf(e) < 0)
                        best = e;
                }
                chosen[t * k + j] = best;
                float p = MathF.Exp(row[best] - max);
                m.Weights[t * slots + j] = p;
                picked += p;
                m.Count[best]++;
            }
            float norm = c.NormalizeWeights ? picked : total;
            for (int j = 0; j < k; j++)
                m.Weights[t * slots + j] /= norm;
        }
        for (int e = 0, offset = 0; e < experts; e++)
        {
            m.Offset[e] = offset;
            offset += m.Count[e];
            m.Count[e] = 0; // refilled below as each group's cursor
        }
        for (int t = 0; t < n; t++)
        {
            for (int j = 0; j < k; j++)
            {
                int e = chosen[t * k + j];
                int row = m.Offset[e] + m.Count[e]++;
                m.Tokens[row] = t;
                m.Slots[t * slots + j] = row;
            }
        }
    }

    private MoeScratch? _moe;

    /// <summary>The routing tables and the expert rows' buffers of one pass, made on the first MoE layer.</summary>
    private sealed class MoeScratch : IDisposable
    {
        public MoeScratch(Backend b, ModelConfig config, int rows)
        {
            var c = config.Moe!;
            RouterLogits = new Activation(b.Allocate((long)rows * c.Experts), rows, c.Experts);
            SharedLogits = new Activation(b.Allocate(rows), rows, 1);
            X = new Activation(b.Allocate((long)rows * config.Dim), rows, config.Dim);
            ExpertOut = new Activation(b.Allocate((long)rows * config.Dim), rows, config.Dim);
            Y = new Activation(b.Allocate((long)rows * c.Slots * config.Dim), rows * c.Slots, config.Dim);
            HostLogits = new float[rows * c.Experts];
            HostShared = new float[rows];
            Chosen = new int[rows * c.Used];
            Tokens = new int[rows * c.Used];
            Slots = new int[rows * c.Slots];
            Weights = new float[rows * c.Slots];
            Count = new int[c.Experts];
            Offset = new int[c.Experts];
        }

        /// <summary>[rows, experts] router logits; [rows, 1] the shared expert's gate logit.</summary>
        public Activation RouterLogits, SharedLogits;
        /// <summary>An expert's gathered input rows, and its output rows before they move into Y.</summary>
        public Activation X, ExpertOut;
        /// <summary>Every expert output of the pass, grouped by expert, then the shared expert's [rows·slots, dim].</summary>
        public Activation Y;
        public float[] HostLogits, HostShared, Weights;
        /// <summary>Per (token, j): the expert chosen; per row of Y: its token; per (token, j): its row of Y.</summary>
        public int[] Chosen, Tokens, Slots;
        /// <summary>Per expert: its rows (then its cursor while placing them) and its first row in Y.</summary>
        public int[] Count, Offset;

        public void Dispose()
        {
            foreach (var a in new[] { RouterLogits, SharedLogits, X, ExpertOut, Y })
                a.Buffer.Dispose();
        }
    }
}
