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
        // A backend that routes on the device (CUDA) takes decoding and verification batches whole.
        if (n <= Backend.GroupedRows && w.Stacks is { } stacks && !HostRouting)
        {
            SharedExpert? shared = w.SharedGate is null ? null : new SharedExpert(w.SharedGate, w.SharedUp!, w.SharedDown!, m.SharedLogits.WithRows(n));
            if (b.RoutedExperts(h, logits, stacks, k, c.NormalizeWeights, shared, dst))
            {
                DeviceRoutedLayers++;
                Trace?.Invoke("ffn_moe_out", l, dst);
                return;
            }
        }
        var hostLogits = m.HostLogits.AsSpan(0, n * experts);
        b.Download(logits, hostLogits);
        Route(hostLogits, n, c, m);

        if (n <= Backend.GroupedRows)
            SmallBatchExperts(s, w, c, h, m);
        else
            ExpertByExpert(s, w, c, h, m);
        b.MoeCombine(m.Y.WithRows(n * slots), m.Slots.AsSpan(0, n * slots), m.Weights.AsSpan(0, n * slots), slots, dst);
        Trace?.Invoke("ffn_moe_out", l, dst);
    }

    /// <summary>
    /// A batch of prefill size: expert by expert, each over its gathered rows with the matrix kernels
    /// (the shared expert over all rows), outputs into rows offset[e].. of Y.
    /// </summary>
    private void ExpertByExpert(in Step s, MoeWeights w, MoeConfig c, Activation h, MoeScratch m)
    {
        var b = Backend;
        int n = h.Rows, k = c.Used, slots = c.Slots;
        // the step's FFN buffers, seen as [rows, expert width] (they are as wide as the widest FFN)
        var gate = new Activation(s.Gate.Buffer, n, c.ExpertFfn);
        var up = new Activation(s.Up.Buffer, n, c.ExpertFfn);
        for (int e = 0; e < c.Experts; e++)
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
            SharedWeights(m, n, k, slots);
            var sharedGate = new Activation(s.Gate.Buffer, n, c.SharedFfn);
            b.GatedFfn(h, w.SharedGate, w.SharedUp!, sharedGate, new Activation(s.Up.Buffer, n, c.SharedFfn), s.Exact);
            b.MatMul(sharedGate, w.SharedDown!, m.ExpertOut.WithRows(n), s.Exact);
            b.CopyRows(m.ExpertOut, 0, m.Y, n * k, n);
        }
    }

    /// <summary>
    /// Decoding and verification batches (up to <see cref="Backend.GroupedRows"/> rows): every chosen
    /// expert's gate and up products in one <see cref="Backend.MatMulGroups"/> call, SwiGLU, then every
    /// down product in a second — two parallel passes per layer however many experts the rows chose,
    /// instead of two per expert.
    /// </summary>
    private void SmallBatchExperts(in Step s, MoeWeights w, MoeConfig c, Activation h, MoeScratch m)
    {
        var b = Backend;
        int n = h.Rows, k = c.Used, slots = c.Slots, used = 0;
        var inputs = m.Inputs;
        var targets = m.Targets;
        for (int e = 0; e < c.Experts; e++)
        {
            int count = m.Count[e];
            if (count == 0)
                continue;
            var slot = m.Slot(b, used, c);
            var input = h;
            if (count < n)
            {
                input = slot.X.WithRows(count);
                b.GatherRows(h, m.Tokens.AsSpan(m.Offset[e], count), input);
            }
            inputs[2 * used] = inputs[2 * used + 1] = input;
            targets[2 * used] = new MatMulTarget(w.Gate[e], slot.Gate.WithRows(count));
            targets[2 * used + 1] = new MatMulTarget(w.Up[e], slot.Up.WithRows(count));
            m.SlotExpert[used++] = e;
        }
        int products = 2 * used;
        var shared = w.SharedGate is not null ? m.Shared(b, c) : null;
        if (shared is not null)
        {
            inputs[products] = inputs[products + 1] = h;
            targets[products++] = new MatMulTarget(w.SharedGate!, shared.Gate.WithRows(n));
            targets[products++] = new MatMulTarget(w.SharedUp!, shared.Up.WithRows(n));
        }
        b.MatMulGroups(inputs.AsSpan(0, products), targets.AsSpan(0, products));

        products = 0;
        for (int j = 0; j < used; j++)
        {
            int e = m.SlotExpert[j], count = m.Count[e];
            var slot = m.Slot(b, j, c);
            b.SwiGlu(slot.Gate.WithRows(count), slot.Up.WithRows(count), slot.Gate.WithRows(count));
            inputs[products] = slot.Gate.WithRows(count);
            targets[products++] = new MatMulTarget(w.Down[e], slot.Out.WithRows(count));
        }
        if (shared is not null)
        {
            b.SwiGlu(shared.Gate.WithRows(n), shared.Up.WithRows(n), shared.Gate.WithRows(n));
            inputs[products] = shared.Gate.WithRows(n);
            targets[products++] = new MatMulTarget(w.SharedDown!, shared.Out.WithRows(n));
        }
        b.MatMulGroups(inputs.AsSpan(0, products), targets.AsSpan(0, products));
        for (int j = 0; j < used; j++)
        {
            int e = m.SlotExpert[j];
            b.CopyRows(m.Slot(b, j, c).Out, 0, m.Y, m.Offset[e], m.Count[e]);
        }
        if (shared is not null)
        {
            SharedWeights(m, n, k, slots);
            b.CopyRows(shared.Out, 0, m.Y, n * k, n);
        }
    }

    /// <summary>The shared expert's row of each token: its output rows after the routed ones, weighted by sigmoid(gate logit).</summary>
    private void SharedWeights(MoeScratch m, int n, int k, int slots)
    {
        var sharedLogits = m.HostShared.AsSpan(0, n);
        Backend.Download(m.SharedLogits.WithRows(n), sharedLogits);
        for (int t = 0; t < n; t++)
        {
            m.Slots[t * slots + k] = n * k + t;
            m.Weights[t * slots + k] = 1f / (1f + MathF.Exp(-sharedLogits[t]));
        }
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

    /// <summary>MoE layer passes the backend routed on the device (<see cref="Backend.RoutedExperts"/>) so far.</summary>
    public long DeviceRoutedLayers { get; private set; }

    /// <summary>Route experts on the host even where the backend could on the device (the reference path for tests).</summary>
    public bool HostRouting { get; set; }

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
            int most = Math.Min(c.Experts, Backend.GroupedRows * c.Used);
            _slots = new ExpertSlot?[most];
            Inputs = new Activation[2 * most + 2];
            Targets = new MatMulTarget[2 * most + 2];
            SlotExpert = new int[most];
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

        /// <summary>A small batch's buffers for the j-th expert it uses (made on first use, <see cref="Backend.GroupedRows"/> rows).</summary>
        public ExpertSlot Slot(Backend b, int j, MoeConfig c) => _slots[j] ??= new ExpertSlot(b, X.Cols, c.ExpertFfn);

        /// <summary>The shared expert's buffers for a small batch.</summary>
        public ExpertSlot Shared(Backend b, MoeConfig c) => _shared ??= new ExpertSlot(b, X.Cols, c.SharedFfn);

        private readonly ExpertSlot?[] _slots;
        private ExpertSlot? _shared;

        /// <summary>A small batch's products: two per expert and two for the shared one.</summary>
        public Activation[] Inputs;
        public MatMulTarget[] Targets;
        /// <summary>The expert each slot holds.</summary>
        public int[] SlotExpert;

        public void Dispose()
        {
            foreach (var a in new[] { RouterLogits, SharedLogits, X, ExpertOut, Y })
                a.Buffer.Dispose();
            foreach (var slot in _slots)
                slot?.Dispose();
            _shared?.Dispose();
        }
    }

    /// <summary>One expert's rows in a small batch: its gathered input, gate (then SwiGLU), up and output.</summary>
    private sealed class ExpertSlot : IDisposable
    {
        public ExpertSlot(Backend b, int dim, int ffn)
        {
            int rows = Backend.GroupedRows;
            X = new Activation(b.Allocate((long)rows * dim), rows, dim);
            Gate = new Activation(b.Allocate((long)rows * ffn), rows, ffn);
            Up = new Activation(b.Allocate((long)rows * ffn), rows, ffn);
            Out = new Activation(b.Allocate((long)rows * dim), rows, dim);
        }

        public readonly Activation X, Gate, Up, Out;

        public void Dispose()
        {
            foreach (var a in new[] { X, Gate, Up, Out })
                a.Buffer.Dispose();
        }
    }
}
