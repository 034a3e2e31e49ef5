namespace Engine.Backends.Cpu.Kernels;

/// <summary>
/// Multi-head latent attention's rearrangements (kernels/mla.cu does the same): per head, the rotated part
/// first so that RoPE's leading-dims rotation applies, and the value padded to the key width the cache holds.
/// </summary>
public static class Mla
{
    /// <summary>
    /// q[t, h] = [q_pe | q_nope] from qRaw[t, h] = [q_nope | q_pe]; k[t, h] = [k_pe[t] | k_nope]; v[t, h] = [v | 0],
    /// with kvB[t, h] = [k_nope | v].
    /// </summary>
    public static void AssembleF32(float[] qRaw, float[] keyRope, float[] kvB, int rows, int heads, int nope, int rope, int vdim,
        float[] q, float[] k, float[] v)
    {
        int width = nope + rope, kv = nope + vdim;
        for (int t = 0; t < rows; t++)
        {
            var pe = keyRope.AsSpan(t * rope, rope);
            for (int h = 0; h < heads; h++)
            {
                int at = (t * heads + h) * width;
                var raw = qRaw.AsSpan(at, width);
                raw.Slice(nope, rope).CopyTo(q.AsSpan(at, rope));
                raw[..nope].CopyTo(q.AsSpan(at + rope, nope));
                var b = kvB.AsSpan((t * heads + h) * kv, kv);
                pe.CopyTo(k.AsSpan(at, rope));
                b[..nope].CopyTo(k.AsSpan(at + rope, nope));
                b.Slice(nope, vdim).CopyTo(v.AsSpan(at, vdim));
                v.AsSpan(at + vdim, width - vdim).Clear();
            }
        }
    }

    /// <summary>dst[t, h·vdim + i] = att[t, h·width + i] for i &lt; vdim.</summary>
    public static void CompactF32(float[] att, int rows, int heads, int width, int vdim, float[] dst)
    {
        for (int t = 0; t < rows; t++)
        {
            for (int h = 0; h < heads; h++)
                att.AsSpan((t * heads + h) * width, vdim).CopyTo(dst.AsSpan((t * heads + h) * vdim, vdim));
        }
    }
}
