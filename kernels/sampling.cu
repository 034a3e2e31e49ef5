// Fused sampling: temperature, top-k, top-p, min-p and the draw for a batch of rows (every node of a
// verified draft tree, or the one row of a decoding step) in one kernel, one block per row, without
// sorting the vocabulary. Every filter of the chain keeps the tokens whose weight is at least a
// threshold, so the chain is one threshold: top-k's is the k-th largest weight and top-p's the largest
// weight whose upper tail holds p of the mass, each found by a 16-way search over the weights' float
// bit patterns (8 passes over the row, each counting or summing above 15 candidate thresholds at once:
// a radix select, as in "Efficient Top-K and Top-P sampling" in FlashInfer's design notes, without
// float atomics). The draw inverts the kept weights' cumulative sum in vocabulary order with a
// counter-based generator (philox.cuh), so a seed gives the same token on any device and on the
// emulator. Every sum runs in a fixed order (each thread a contiguous range of the row, then a fixed
// tree), so a row's result depends on nothing but the row and the seed.
// When top-k keeps at most 1024 tokens, they are gathered (in vocabulary order) into shared memory and
// top-p, min-p and the draw run over them: 8 passes over the row instead of 17.
// Semantics (SamplerChain's order: temperature → top-k → top-p → min-p): weights w = exp((x − max)/T);
// top-k keeps w ≥ the k-th largest (tokens tied with it are all kept); top-p keeps the smallest set of
// largest weights holding ≥ p of the kept mass (ties at the border kept); min-p keeps w ≥ min_p·max w.
// NaN logits weigh 0 (never drawn); a row with no finite logit draws -1, which the launcher reports.
// CPU reference: engine/Sampling/FusedSampling.cs (FusedSampling.SampleF32, TopKIdsF32).
// Launcher:      managed/Kernels/Sampling.cs.
#include "common.cuh"
#include "philox.cuh"
#include "sampling.cuh"

#define SAMPLE_WAYS 16 // a search pass tests SAMPLE_WAYS - 1 thresholds
#define SAMPLE_ONE 0x3F800000u // the bits of 1.0f: the largest weight


#define SAMPLE_MAX_CANDIDATES 1024 // tokens top-k may keep for the rest of the chain to run in shared memory

// For each candidate threshold c[j] (bit patterns): Σ over the n weights with bits(w) ≥ max(c[j], base)
// of 1 (count) or w (mass), left in s_total[j] for every thread. Fixed order: each thread a contiguous
// range left to right, the warp by butterfly, the warps in order.
template <typename Weight>
static __device__ void sample_tail_sums(const Weight & weight, int n, unsigned base, const unsigned * c, bool mass,
                                        float (*s_part)[SAMPLE_WAYS], float * s_total) {
    const int per = (n + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
    const int lo = min(n, (int) threadIdx.x * per), hi = min(n, lo + per);
    float sums[SAMPLE_WAYS - 1];
#pragma unroll
    for (int j = 0; j < SAMPLE_WAYS - 1; j++) {
        sums[j] = 0.0f;
    }
    for (int i = lo; i < hi; i++) {
        const float w = weight(i);
        const unsigned bits = __float_as_uint(w);
        if (bits < base) {
            continue;
        }
        const float add = mass ? w : 1.0f;
#pragma unroll
        for (int j = 0; j < SAMPLE_WAYS - 1; j++) {
            if (bits >= c[j]) {
                sums[j] += add;
            }
        }
    }
    const int lane = threadIdx.x % ENGINE_WARP_SIZE, warp = threadIdx.x / ENGINE_WARP_SIZE;
#pragma unroll
    for (int j = 0; j < SAMPLE_WAYS - 1; j++) {
        const float v = warp_reduce_sum(sums[j]);
        if (lane == 0) {
            s_part[warp][j] = v;
        }
    }
    __syncthreads();
    if (threadIdx.x < SAMPLE_WAYS - 1) {
        float t = 0.0f;
        for (int w = 0; w < (int) (blockDim.x / ENGINE_WARP_SIZE); w++) {
            t += s_part[w][threadIdx.x];
        }
        s_total[threadIdx.x] = t;
    }
    __syncthreads();
}

// The largest threshold T ≥ base whose tail (weights with bits ≥ T, count or mass) reaches target.
template <typename Weight>
static __device__ unsigned sample_threshold(const Weight & weight, int n, unsigned base, float target, bool mass,
                                            float (*s_part)[SAMPLE_WAYS], float * s_total) {
    unsigned low = base, high = SAMPLE_ONE + 1; // tail(low) reaches the target, tail(high) is empty
    unsigned c[SAMPLE_WAYS - 1];
    while (high - low > 1) {
        const unsigned step = (high - low + SAMPLE_WAYS - 1) / SAMPLE_WAYS;
#pragma unroll
        for (int j = 0; j < SAMPLE_WAYS - 1; j++) {
            const unsigned long long cj = (unsigned long long) low + (unsigned long long) (j + 1) * step;
            c[j] = cj < high ? (unsigned) cj : 0xFFFFFFFFu; // past high: an empty tail
        }
        sample_tail_sums(weight, n, base, c, mass, s_part, s_total);
        unsigned new_high = high;
        for (int j = SAMPLE_WAYS - 2; j >= 0; j--) {
            if (c[j] != 0xFFFFFFFFu && s_total[j] >= target) {
                low = c[j];
                break;
            }
            if (c[j] != 0xFFFFFFFFu) {
                new_high = c[j];
            }
        }
        high = new_high;
        __syncthreads(); // s_total is read by every thread before the next pass rewrites it
    }
    return low;
}

// The total kept mass: the tail sum at the threshold itself.
template <typename Weight>
static __device__ float sample_mass(const Weight & weight, int n, unsigned keep, float (*s_part)[SAMPLE_WAYS], float * s_total) {
    unsigned c[SAMPLE_WAYS - 1];
    for (int j = 0; j < SAMPLE_WAYS - 1; j++) {
        c[j] = j == 0 ? keep : 0xFFFFFFFFu;
    }
    sample_tail_sums(weight, n, keep, c, true, s_part, s_total);
    const float mass = s_total[0];
    __syncthreads();
    return mass;
}

// A token's weight (every token of the row).
struct RowWeight {
    const float * x;
    float mx, inv_temp;
    __device__ float operator()(int i) const { return sample_weight(x[i], mx, inv_temp); }
};

// A kept token's weight, 0 for one the chain filtered out.
struct KeptWeight {
    const float * x;
    float mx, inv_temp;
    unsigned keep;
    __device__ float operator()(int i) const {
        const float w = sample_weight(x[i], mx, inv_temp);
        return __float_as_uint(w) >= keep ? w : 0.0f;
    }
};

// The weights top-k kept, gathered in vocabulary order into shared memory (and, with a threshold, 0 below it).
struct CandidateWeight {
    const float * w;
    unsigned keep;
    __device__ float operator()(int i) const { return __float_as_uint(w[i]) >= keep ? w[i] : 0.0f; }
};

// sample_f32
//   logits:     [rows, vocab] float32
//   inv_temp:   1/T (> 0); top_k: 0 = off; top_p: 1 = off; min_p: 0 = off
//   seed, offset: the draw of row r is philox_uniform(seed, offset, r, 0)
//   query:      null, or [rows] token ids (−1: none) whose kept probability goes to query_prob[r]
//   token:      [rows] the drawn token (−1: the row had no finite logit); prob: [rows] its probability
//   probs:      null, or [rows, vocab]: the chain's normalized distribution (0 where filtered out)
//   stats:      null, or [rows, 3]: (max logit, the kept threshold on weights, kept mass Z) — all
//               the row's distribution needs: p(i) = w(i) ≥ threshold ? w(i) / Z : 0 (sample_prob),
//               which acceptance recomputes for the few tokens it asks about instead of reading a
//               whole [rows, vocab] distribution
// Launch: grid = (rows, 1, 1); block = (1024, 1, 1).
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_f32(
        const float * __restrict__ logits, int vocab, float inv_temp, int top_k, float top_p, float min_p,
        unsigned long long seed, unsigned long long offset, const int * __restrict__ query,
        int * __restrict__ token, float * __restrict__ prob, float * __restrict__ query_prob, float * __restrict__ probs,
        float * __restrict__ stats) {
    __shared__ float s_part[SAMPLE_THREADS / ENGINE_WARP_SIZE][SAMPLE_WAYS];
    __shared__ float s_total[SAMPLE_WAYS];
    __shared__ float s_base[SAMPLE_THREADS + 1];
    __shared__ float s_warp[SAMPLE_THREADS / ENGINE_WARP_SIZE];
    __shared__ int s_choice;
    __shared__ int s_count[SAMPLE_THREADS];
    __shared__ int s_warp_count[SAMPLE_THREADS / ENGINE_WARP_SIZE];
    __shared__ float s_cand_w[SAMPLE_MAX_CANDIDATES];
    __shared__ int s_cand_i[SAMPLE_MAX_CANDIDATES];

    const int row = blockIdx.x;
    const float * x = logits + (long long) row * vocab;
    const int per = (vocab + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
    const int lo = min(vocab, (int) threadIdx.x * per), hi = min(vocab, lo + per);

    float local_max = -INFINITY;
    for (int i = lo; i < hi; i++) {
        local_max = fmaxf(local_max, x[i]); // fmaxf drops NaN
    }
    const float mx = block_reduce_max(local_max);
    if (!(mx > -INFINITY) || mx == INFINITY) {
        if (threadIdx.x == 0) {
            if (stats != nullptr) {
                stats[row * 3] = mx;
                stats[row * 3 + 1] = INFINITY; // nothing kept
                stats[row * 3 + 2] = 0.0f;
            }
            token[row] = -1;
            prob[row] = 0.0f;
            if (query != nullptr) {
                query_prob[row] = 0.0f;
            }
        }
        return; // the whole block leaves together
    }

    // The chain's threshold on weights' bits: tokens with bits(w) ≥ keep are kept.
    const RowWeight all{x, mx, inv_temp};
    unsigned keep = 0;
    int candidates = -1; // how many tokens top-k gathered into shared memory (−1: the row is used in place)
    if (top_k > 0 && top_k < vocab) {
        keep = sample_threshold(all, vocab, keep, (float) top_k, false, s_part, s_total);
        // Gather the kept tokens, in vocabulary order, when they fit: top-p, min-p and the draw then
        // run over them instead of passing over the whole row again.
        int count = 0;
        for (int i = lo; i < hi; i++) {
            count += __float_as_uint(all(i)) >= keep ? 1 : 0;
        }
        s_count[threadIdx.x] = count;
        __syncthreads();
        const int warp = threadIdx.x / ENGINE_WARP_SIZE;
        int at = 0;
        for (int t = warp * ENGINE_WARP_SIZE; t < (int) threadIdx.x; t++) {
            at += s_count[t];
        }
        if (threadIdx.x % ENGINE_WARP_SIZE == ENGINE_WARP_SIZE - 1) {
            s_warp_count[warp] = at + count;
        }
        __syncthreads();
        int total = 0;
        for (int w = 0; w < SAMPLE_THREADS / ENGINE_WARP_SIZE; w++) {
            at += w < warp ? s_warp_count[w] : 0;
            total += s_warp_count[w];
        }
        if (total <= SAMPLE_MAX_CANDIDATES) {
            for (int i = lo; i < hi; i++) {
                const float w = all(i);
                if (__float_as_uint(w) >= keep) {
                    s_cand_w[at] = w;
                    s_cand_i[at] = i;
                    at++;
                }
            }
            candidates = total;
        }
        __syncthreads();
    }
    const CandidateWeight gathered{s_cand_w, 0u};
    if (top_p < 1.0f) {
        const float target = top_p * (candidates >= 0 ? sample_mass(gathered, candidates, keep, s_part, s_total)
                                                      : sample_mass(all, vocab, keep, s_part, s_total));
        keep = candidates >= 0 ? sample_threshold(gathered, candidates, keep, target, true, s_part, s_total)
                               : sample_threshold(all, vocab, keep, target, true, s_part, s_total);
    }
    if (min_p > 0.0f) {
        keep = max(keep, __float_as_uint(min_p)); // max w = exp(0) = 1
    }

    // The draw over the kept weights (block_draw: fixed-order prefix sums, u·Z located, then walked).
    const float u = philox_uniform(seed, offset, (unsigned) row, 0u);
    float z = 0.0f;
    int chosen;
    if (candidates >= 0) {
        chosen = block_draw(CandidateWeight{s_cand_w, keep}, candidates, u, s_base, s_warp, &s_choice, &z);
        chosen = chosen >= 0 ? s_cand_i[chosen] : -1;
    } else {
        chosen = block_draw(KeptWeight{x, mx, inv_temp, keep}, vocab, u, s_base, s_warp, &s_choice, &z);
    }
    if (threadIdx.x == 0) {
        if (stats != nullptr) {
            stats[row * 3] = mx;
            stats[row * 3 + 1] = __uint_as_float(keep);
            stats[row * 3 + 2] = z;
        }
        token[row] = chosen;
        prob[row] = sample_weight(x[chosen], mx, inv_temp) / z;
        if (query != nullptr) {
            const int qt = query[row];
            float qp = 0.0f;
            if (qt >= 0 && qt < vocab) {
                const float w = sample_weight(x[qt], mx, inv_temp);
                qp = __float_as_uint(w) >= keep ? w / z : 0.0f;
            }
            query_prob[row] = qp;
        }
    }
    if (probs != nullptr) {
        float * pr = probs + (long long) row * vocab;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
            const float w = sample_weight(x[i], mx, inv_temp);
            pr[i] = __float_as_uint(w) >= keep ? w / z : 0.0f;
        }
    }
}

// top_k_ids_f32: ids[r·k + j] = the index of row r's j-th largest logit (the earlier index on ties; NaN
// and −∞ never chosen; −1 past the row's finite values) — the successors Token Recycling records,
// so a verification hands the host k ids per row instead of the vocabulary's logits.
// Launch: grid = (rows, 1, 1); block = (1024, 1, 1).
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) top_k_ids_f32(const float * __restrict__ logits, int vocab, int k,
                                                                           int * __restrict__ ids) {
    __shared__ float s_v[SAMPLE_THREADS];
    __shared__ int s_i[SAMPLE_THREADS];
    const int row = blockIdx.x;
    const float * x = logits + (long long) row * vocab;
    float prev_v = INFINITY;
    int prev_i = -1;
    for (int j = 0; j < k; j++) {
        // This thread's first token after (prev_v, prev_i) in the order (value descending, index ascending).
        float best_v = -INFINITY;
        int best_i = -1;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
            const float v = x[i];
            if (!(v > -INFINITY)) {
                continue; // NaN or −∞
            }
            const bool after = v < prev_v || (v == prev_v && i > prev_i);
            if (after && (best_i < 0 || v > best_v || (v == best_v && i < best_i))) {
                best_v = v;
                best_i = i;
            }
        }
        s_v[threadIdx.x] = best_v;
        s_i[threadIdx.x] = best_i;
        __syncthreads();
        for (int stride = SAMPLE_THREADS / 2; stride > 0; stride >>= 1) {
            if ((int) threadIdx.x < stride) {
                const float ov = s_v[threadIdx.x + stride];
                const int oi = s_i[threadIdx.x + stride];
                const int mi = s_i[threadIdx.x];
                if (oi >= 0 && (mi < 0 || ov > s_v[threadIdx.x] || (ov == s_v[threadIdx.x] && oi < mi))) {
                    s_v[threadIdx.x] = ov;
                    s_i[threadIdx.x] = oi;
                }
            }
            __syncthreads();
        }
        prev_v = s_v[0];
        prev_i = s_i[0];
        if (threadIdx.x == 0) {
            ids[(long long) row * k + j] = prev_i;
        }
        __syncthreads(); // s_v/s_i are rewritten by the next round
        if (prev_i < 0) {
            prev_v = -INFINITY; // nothing left: the remaining rounds find nothing either
        }
    }
}
