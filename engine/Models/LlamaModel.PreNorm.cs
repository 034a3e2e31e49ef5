using Engine.Backends;

namespace Engine.Models;

public sealed partial class LlamaModel
{
    /// <summary>
    /// A pre-norm layer (Llama, Mistral, Qwen2/3, Granite 3, SmolLM3, Phi-3), entered with <c>s.H</c> =
    /// its attention norm of the residual stream:
    /// <code>
    /// x += Wo · attention(norm(x))                                  (times Granite's residual multiplier)
    /// x += W_down · (silu(W_gate · norm(x)) ⊙ W_up · norm(x))        (or a mixture of experts: LlamaModel.Moe.cs)
    /// </code>
    /// Each block ends with the next norm (the FFN's, then the next layer's attention norm or the output
    /// norm, <paramref name="nextNorm"/>) so that a backend may fuse projection, residual add and norm.
    /// </summary>
    private void PreNormLayer(in Step s, int l, DeviceVector nextNorm)
    {
        var c = Config;
        var b = Backend;
        var w = _w.Layers[l];
        Trace?.Invoke("attn_norm", l, s.H);
        SelfAttention(s, l, s.H);
        b.MatMulAddNorm(AttentionOutput(s), w.Wo, s.X, s.Proj, w.FfnNorm!, c.RmsNormEps, s.H, s.Exact, c.ResidualScale);
        Trace?.Invoke("attn_residual", l, s.X);
        Trace?.Invoke("ffn_norm", l, s.H);

        if (w.Moe is not null || w.BlockFfn is not null)
        {
            if (w.Moe is not null)
                MoeFfn(s, l, s.H, s.Proj);
            else
                BlockFfnLayer(s, l, s.H, s.Proj);
            if (c.ResidualScale != 1f)
                b.Scale(s.Proj, c.ResidualScale);
            b.Add(s.X, s.Proj);
            b.RmsNorm(s.X, nextNorm, c.RmsNormEps, s.H);
        }
        else
        {
            b.GatedFfn(s.H, w.WGate!, w.WUp!, s.Gate, s.Up, s.Exact);
            b.MatMulAddNorm(s.Gate, w.WDown!, s.X, s.Proj, nextNorm, c.RmsNormEps, s.H, s.Exact, c.ResidualScale);
        }
        Trace?.Invoke("l_out", l, s.X);
    }
}
