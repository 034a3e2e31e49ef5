namespace Engine.Sampling;

/// <summary>
/// Philox4x32-10 (Salmon et al., "Parallel Random Numbers: As Easy as 1, 2, 3", SC 2011): the
/// counter-based generator the device kernels draw with — the CPU reference of kernels/philox.cuh,
/// bit for bit. A draw is a function of (seed, offset, row, stream) alone, so a seed reproduces a
/// sampled generation on any GPU and on the emulator, however the work is laid out.
/// </summary>
public static class Philox
{
    /// <summary>The first 32-bit word of Philox4x32-10 of counter (c0, c1, c2, c3) under key <paramref name="seed"/>.</summary>
    public static uint U32(ulong seed, uint c0, uint c1, uint c2, uint c3)
    {
        uint k0 = (uint)seed, k1 = (uint)(seed >> 32);
        for (int i = 0; i < 10; i++)
        {
            ulong p0 = 0xD2511F53UL * c0, p1 = 0xCD9E8D57UL * c2;
            uint n0 = (uint)(p1 >> 32) ^ c1 ^ k0, n2 = (uint)(p0 >> 32) ^ c3 ^ k1;
            (c0, c1, c2, c3) = (n0, (uint)p1, n2, (uint)p0);
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        return c0;
    }

    /// <summary>philox_uniform: a float in [0, 1) with 24 random bits for draw (offset, row, stream).</summary>
    public static float Uniform(ulong seed, ulong offset, uint row, uint stream) =>
        (U32(seed, (uint)offset, (uint)(offset >> 32), row, stream) >> 8) * (1.0f / 16777216.0f);
}
