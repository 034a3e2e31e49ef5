// The weights and probabilities of the fused sampler (sampling.cu), shared with acceptance.cu so that
// acceptance recomputes the sampler's distribution exactly from a row's logits and its stats.
#pragma once

// w = exp((x − max)·(1/T)); NaN and −∞ weigh 0.
static __device__ __forceinline__ float sample_weight(float x, float mx, float inv_temp) {
    return x == x ? expf((x - mx) * inv_temp) : 0.0f;
}

// p(i) of a row sample_f32 described by its stats (max, threshold, Z): exactly what its probs output holds.
static __device__ __forceinline__ float sample_prob(float x, const float * stats, float inv_temp) {
    const float w = sample_weight(x, stats[0], inv_temp);
    return w >= stats[1] ? w / stats[2] : 0.0f; // weights are ≥ 0, so value order is bit order
}
