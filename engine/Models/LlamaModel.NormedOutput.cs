using Engine.Backends;

namespace Engine.Models;

public sealed partial class LlamaModel
{
    /// <summary>
    /// A layer whose blocks normalize their outputs before the residual add: OLMo 2 (OLMo Team, "2 OLMo 2
    /// Furious", 2024) with no norm before the blocks, and Gemma 2/3 (Gemma Team, 2024, 2025) with norms on
    /// both sides and GeGLU in the FFN:
    /// <code>
    /// x += norm_post(Wo · attention(norm_pre(x)))
    /// x += norm_post(W_down · (act(W_gate · norm_pre(x)) ⊙ W_up · norm_pre(x)))     act = silu (OLMo 2), tanh-GELU (Gemma)
    /// </code>
    /// (norm_pre is the identity in OLMo 2.)
    /// </summary>
    private void NormedOutputLayer(in Step s, int l)
    {
        var c = Config;
        var b = Backend;
        var w = _w.Layers[l];
        var input = s.X;
        if (w.AttnNorm is not null)
        {
            b.RmsNorm(s.X, w.AttnNorm, c.RmsNormEps, s.H);
            input = s.H;
            Trace?.Invoke("attn_norm", l, s.H);
        }
        SelfAttention(s, l, input);
        b.MatMul(AttentionOutput(s), w.Wo, s.Proj, s.Exact);
        b.RmsNorm(s.Proj, w.AttnPostNorm!, c.RmsNormEps, s.Proj);
        b.Add(s.X, s.Proj);
        Trace?.Invoke("attn_residual", l, s.X);

        input = s.X;
        if (w.FfnNorm is not null)
        {
            b.RmsNorm(s.X, w.FfnNorm, c.RmsNormEps, s.H);
            input = s.H;
            Trace?.Invoke("ffn_norm", l, s.H);
        }
        b.GatedFfn(input, w.WGate!, w.WUp!, s.Gate, s.Up, s.Exact, gelu: c.Gemma);
        b.MatMul(s.Gate, w.WDown!, s.Proj, s.Exact);
        b.RmsNorm(s.Proj, w.FfnPostNorm!, c.RmsNormEps, s.Proj);
        b.Add(s.X, s.Proj);
        Trace?.Invoke("l_out", l, s.X);
    }
}
