// Rotary position embedding (Su et al., "RoFormer", 2021), in place on q or k.
// CPU reference: engine/Backends/Cpu/Kernels/Rope.cs (Rope.RopeF32) with RopeTable's angles.
// Launcher:      managed/Kernels/Rope.cs.
#include "common.cuh"

// rope_f32
//   x:         [n, heads·head_dim] float32, rotated in place
//   positions: [n] int32
//   inv_freq:  [pairs] float64, θᵢ in radians per position (RopeTable.InvFreq); pairs <= head_dim / 2
//   neox:      0 rotates (x[2i], x[2i+1]); 1 rotates (x[i], x[i + pairs]); dims past 2·pairs pass through
//   mscale:    cos and sin are multiplied by it (LongRoPE's attention factor; 1 elsewhere)
// The angle pos·θᵢ, its cosine and sine (times mscale) are computed in double and rounded once to
// float — exactly what RopeTable does on the host, so both sides rotate by the same float cos/sin.
// Launch: grid = (n, heads, 1); block = (P, 1, 1) with P >= pairs (the launcher rounds pairs up to 32).
extern "C" __global__ void rope_f32(float * x, const int * __restrict__ positions, const double * __restrict__ inv_freq,
                                    int heads, int head_dim, int pairs, int neox, double mscale) {
    const int r = blockIdx.x, h = blockIdx.y, i = threadIdx.x;
    if (i >= pairs) {
        return;
    }
    float * head = x + ((long long) r * heads + h) * head_dim;
    double s, c;
    sincos((double) positions[r] * inv_freq[i], &s, &c);
    const float cf = (float) (c * mscale), sf = (float) (s * mscale);
    const int a = neox ? i : 2 * i;
    const int b = neox ? i + pairs : 2 * i + 1;
    rope_pair(head[a], head[b], cf, sf, head[a], head[b]);
}
