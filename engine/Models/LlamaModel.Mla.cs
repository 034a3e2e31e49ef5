using Engine.Backends;

namespace Engine.Models;

public sealed partial class LlamaModel
{
    /// <summary>
    /// Multi-head latent attention's projections (<see cref="MlaConfig"/>; DeepSeek-AI, "DeepSeek-V2", 2024) into
    /// <c>s.Q</c>, <c>s.K</c>, <c>s.V</c>, so that the rest of <see cref="SelfAttention"/> — RoPE, the cache,
    /// attention — runs as for any layer:
    /// <code>
    /// q        = W_qb · RMSNorm(W_qa · x)           per head [q_nope | q_pe]   (or W_q · x without the low rank)
    /// c, k_pe  = W_kv_a · x                         c: the latent, k_pe: one rotated key part for every head
    /// [k_nope | v] = W_kv_b · RMSNorm(c)            per head
    /// q' = [q_pe | q_nope], k' = [k_pe | k_nope], v' = [v | 0]   (Backend.MlaAssemble: RoPE rotates the leading dims)
    /// </code>
    /// </summary>
    private void MlaProjections(in Step s, Activation input, MlaWeights w)
    {
        var b = Backend;
        var c = Config.Mla!;
        int n = input.Rows;
        var m = _mla ??= new MlaScratch(b, Config, MaxBatch);
        var raw = m.Q.WithRows(n);
        var latent = m.Latent.WithRows(n);
        var keyRope = m.KeyRope.WithRows(n);
        if (w.QA is { } qa)
        {
            var low = m.QA.WithRows(n);
            b.MatMul(input, [new MatMulTarget(qa, low), new MatMulTarget(w.Latent, latent), new MatMulTarget(w.KeyRope, keyRope)], s.Exact);
            b.RmsNorm(low, w.QANorm!, MlaConfig.NormEps, low);
            b.MatMul(low, w.Q, raw, s.Exact);
        }
        else
            b.MatMul(input, [new MatMulTarget(w.Q, raw), new MatMulTarget(w.Latent, latent), new MatMulTarget(w.KeyRope, keyRope)], s.Exact);
        b.RmsNorm(latent, w.LatentNorm, MlaConfig.NormEps, latent);
        var kvB = m.KvB.WithRows(n);
        b.MatMul(latent, w.KvB, kvB, s.Exact);
        b.MlaAssemble(raw, keyRope, kvB, Config.Heads, c.NopeDim, c.RopeDim, c.VDim, s.Q, s.K, s.V);
    }

    /// <summary>The attention output as the output projection reads it: each head's value dims (MLA), or as it is.</summary>
    private Activation AttentionOutput(in Step s)
    {
        if (Config.Mla is not { } c)
            return s.Att;
        var compact = _mla!.Compact.WithRows(s.Att.Rows);
        Backend.MlaCompact(s.Att, Config.Heads, c.VDim, compact);
        return compact;
    }

    private MlaScratch? _mla;

    private sealed class MlaScratch : IDisposable
    {
        public MlaScratch(Backend b, ModelConfig config, int rows)
        {
            var c = config.Mla!;
            Activation Make(int cols) => new(b.Allocate((long)rows * Math.Max(cols, 1)), rows, cols);
            QA = Make(c.QLoraRank);
            Q = Make(config.QDim);
            Latent = Make(c.KvLoraRank);
            KeyRope = Make(c.RopeDim);
            KvB = Make(config.Heads * (c.NopeDim + c.VDim));
            Compact = Make(config.AttentionOutputDim);
        }

        public readonly Activation QA, Q, Latent, KeyRope, KvB, Compact;

        public void Dispose()
        {
            foreach (var a in new[] { QA, Q, Latent, KeyRope, KvB, Compact })
                a.Buffer.Dispose();
        }
    }
}
