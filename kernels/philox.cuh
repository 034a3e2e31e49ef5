// Philox4x32-10, the counter-based generator of Salmon et al., "Parallel Random Numbers: As Easy as
// 1, 2, 3" (SC 2011), as cuRAND and PyTorch use it: 10 rounds of two 32×32→64-bit multiplies over a
// 128-bit counter under a 64-bit key. A draw is a pure function of (seed, counter), so a seed gives
// the same numbers on any GPU, on the emulator and in the C# reference (engine/Sampling/Philox.cs),
// whatever the launch shape. Counters used by the kernels: (offset low, offset high, row, stream),
// offset = the decoding step, stream = which draw of the step (kernels/sampling.cu, acceptance.cu).
#pragma once

static __device__ __forceinline__ void philox_round(unsigned & c0, unsigned & c1, unsigned & c2, unsigned & c3, unsigned k0, unsigned k1) {
    const unsigned long long p0 = (unsigned long long) 0xD2511F53u * c0;
    const unsigned long long p1 = (unsigned long long) 0xCD9E8D57u * c2;
    const unsigned hi0 = (unsigned) (p0 >> 32), lo0 = (unsigned) p0;
    const unsigned hi1 = (unsigned) (p1 >> 32), lo1 = (unsigned) p1;
    const unsigned n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
}

// The first 32-bit word of Philox4x32-10(counter (c0, c1, c2, c3), key = seed).
static __device__ __forceinline__ unsigned philox_u32(unsigned long long seed, unsigned c0, unsigned c1, unsigned c2, unsigned c3) {
    unsigned k0 = (unsigned) seed, k1 = (unsigned) (seed >> 32);
#pragma unroll
    for (int i = 0; i < 10; i++) {
        philox_round(c0, c1, c2, c3, k0, k1);
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    return c0;
}

// A float in [0, 1) with 24 random bits: draw (offset, row, stream).
static __device__ __forceinline__ float philox_uniform(unsigned long long seed, unsigned long long offset, unsigned row, unsigned stream) {
    const unsigned x = philox_u32(seed, (unsigned) offset, (unsigned) (offset >> 32), row, stream);
    return (float) (x >> 8) * (1.0f / 16777216.0f);
}
