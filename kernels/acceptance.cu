// Draft-verify acceptance on the device: after the target has verified a draft tree (row 0 after the
// root, row i + 1 after node i), decide which path to keep and the next token, so the host reads back
// a few integers per step instead of the tree's logits.
//   accept_greedy:  follow the child whose token is the target's argmax while there is one (greedy
//                   decoding: the output equals plain greedy decoding).
//   accept_sampled: recursive rejection sampling over the tree — child x (drawn from q) is accepted with
//                   probability min(1, p(x)/q(x)); on rejection p ← normalize(max(0, p − q)) for the next
//                   sibling; if every child is rejected the next token is drawn from what remains. q is
//                   one-hot for deterministic drafts, the draft distribution for independent draws, and
//                   the draft distribution without the earlier siblings for draws without replacement.
//                   Speculative sampling (Leviathan et al., "Fast Inference from Transformers via
//                   Speculative Decoding", 2023; Chen et al., 2023) is the chain case; trees as in
//                   SpecInfer (Miao et al., 2023); draws without replacement as in Recursive Speculative
//                   Decoding (Jeong et al., 2024). The output follows the target distribution exactly.
// Both write out[0] = accepted length L, out[1] = the next token, out[2 .. 2 + L) = the accepted nodes; the
// cache keeps rows 0 and node + 1 of each (KvSequence.Compact).
// CPU reference: engine/Speculative/AcceptanceKernels.cs (AcceptanceKernels.AcceptGreedy, AcceptSampled).
// Launcher:      managed/Kernels/Acceptance.cs.
#include "common.cuh"
#include "philox.cuh"
#include "sampling.cuh"

#define ACCEPT_MAX_SIBLINGS 256

// accept_greedy
//   parent: [n] parent node (−1 = the root; parents come before children); token: [n]
//   argmax: [n + 1] the target's argmax after the root (0) and after node i (i + 1)
// Launch: grid = (1, 1, 1); block = (32, 1, 1) (one thread walks; trees are small).
extern "C" __global__ void accept_greedy(const int * __restrict__ parent, const int * __restrict__ token, int n,
                                         const int * __restrict__ argmax, int * __restrict__ out) {
    if (threadIdx.x != 0) {
        return;
    }
    int node = -1, length = 0;
    while (true) {
        const int best = argmax[node + 1];
        int next = -1;
        for (int c = node + 1; c < n; c++) {
            if (parent[c] == node && token[c] == best) {
                next = c; // the first such child, as GreedyMatch takes it
                break;
            }
        }
        if (next < 0) {
            out[0] = length;
            out[1] = best;
            return;
        }
        out[2 + length++] = next;
        node = next;
    }
}

// Σ w over [0, n) in a fixed order (each thread a contiguous range, then the warp's butterfly, then the
// warps in order); every thread gets it. s_part: one float per warp.
static __device__ float accept_block_sum(const float * w, int n, float * s_part) {
    const int per = (n + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
    const int lo = min(n, (int) threadIdx.x * per), hi = min(n, lo + per);
    float local = 0.0f;
    for (int i = lo; i < hi; i++) {
        local += w[i];
    }
    local = warp_reduce_sum(local);
    if (threadIdx.x % ENGINE_WARP_SIZE == 0) {
        s_part[threadIdx.x / ENGINE_WARP_SIZE] = local;
    }
    __syncthreads();
    float total = 0.0f;
    for (int w2 = 0; w2 < SAMPLE_THREADS / ENGINE_WARP_SIZE; w2++) {
        total += s_part[w2];
    }
    __syncthreads();
    return total;
}

// The residual's weights, read from memory.
struct ResidualWeight {
    const float * w;
    __device__ float operator()(int i) const { return w[i]; }
};

// accept_sampled
//   logits:  [n + 1, vocab] the target's logits after the root (row 0) and after node i (row i + 1);
//            stats: [n + 1, 3] what sample_f32 found for each row (max, threshold, Z), so that
//            p(i) = sample_prob(...) is the chain's distribution without it ever being written out;
//            inv_temp: 1/T as sample_f32 had it; sampled: [n + 1] sample_f32's draw from each row
//   q:       [*, vocab] draft distributions; qrow: [n + 1] the row of q its children were drawn from
//            (−1: deterministic children, q one-hot); draw: [n + 1] 0 deterministic, 1 independent,
//            2 without replacement
//   parent, token: [n] the tree; residual: [vocab] scratch
//   seed, offset: child c's test draws philox_uniform(seed, offset, c + 1, 1); a draw from a residual
//            after row r's children were all rejected draws philox_uniform(seed, offset, r, 2)
// Launch: grid = (1, 1, 1); block = (1024, 1, 1).
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) accept_sampled(
        const float * __restrict__ logits, const float * __restrict__ stats, float inv_temp, const int * __restrict__ sampled,
        const float * __restrict__ q, const int * __restrict__ qrow,
        const int * __restrict__ draw, const int * __restrict__ parent, const int * __restrict__ token, int n, int vocab,
        unsigned long long seed, unsigned long long offset, float * __restrict__ residual, int * __restrict__ out) {
    __shared__ float s_part[SAMPLE_THREADS / ENGINE_WARP_SIZE];
    __shared__ float s_base[SAMPLE_THREADS + 1];
    __shared__ float s_warp[SAMPLE_THREADS / ENGINE_WARP_SIZE];
    __shared__ int s_choice;
    __shared__ int s_excluded[ACCEPT_MAX_SIBLINGS];

    int node = -1, length = 0;
    while (true) {
        const int row = node + 1;
        const float * x_row = logits + (long long) row * vocab;
        const float * st = stats + row * 3;
        const int kind = draw[row];
        const float * qr = qrow[row] >= 0 ? q + (long long) qrow[row] * vocab : nullptr;
        bool modified = false; // the residual replaced p
        double removed = 0.0;  // q's mass already drawn (without replacement)
        int excluded = 0;
        int accepted = -1;
        // Every thread takes the same decisions (the same values, the same draws): barriers stay uniform.
        for (int c = node + 1; c < n; c++) {
            if (parent[c] != node) {
                continue;
            }
            const int x = token[c];
            bool is_excluded = false;
            for (int e = 0; e < excluded; e++) {
                is_excluded = is_excluded || s_excluded[e] == x;
            }
            const double qx = kind == 0 ? 1.0 : kind == 1 ? (double) qr[x] : is_excluded ? 0.0 : (double) qr[x] / (1.0 - removed);
            if (qx <= 0.0) {
                continue; // the draft could not have drawn it: no evidence either way
            }
            const double px = modified ? residual[x] : sample_prob(x_row[x], st, inv_temp);
            const float u = philox_uniform(seed, offset, (unsigned) (c + 1), 1u);
            if ((double) u < fmin(1.0, px / qx)) {
                accepted = c;
                break;
            }
            // Rejected: p ← normalize(max(0, p − q)).
            if (!modified) {
                for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
                    residual[i] = sample_prob(x_row[i], st, inv_temp);
                }
                modified = true;
                __syncthreads();
            }
            if (kind == 0) {
                if (threadIdx.x == 0) {
                    residual[x] = 0.0f;
                }
            } else if (kind == 1) {
                for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
                    residual[i] = fmaxf(0.0f, residual[i] - qr[i]);
                }
            } else {
                const float inv = (float) (1.0 / (1.0 - removed));
                for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
                    bool out_i = false;
                    for (int e = 0; e < excluded; e++) {
                        out_i = out_i || s_excluded[e] == i;
                    }
                    if (!out_i) {
                        residual[i] = fmaxf(0.0f, residual[i] - qr[i] * inv);
                    }
                }
            }
            __syncthreads();
            if (kind == 2) {
                if (threadIdx.x == 0 && excluded < ACCEPT_MAX_SIBLINGS) {
                    s_excluded[excluded] = x;
                }
                excluded = min(excluded + 1, ACCEPT_MAX_SIBLINGS);
                removed += (double) qr[x];
            }
            const float sum = accept_block_sum(residual, vocab, s_part);
            if (!(sum > 1e-12f)) {
                // p was (numerically) q, so rejection had probability 0: keep the target's own distribution
                for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
                    residual[i] = sample_prob(x_row[i], st, inv_temp);
                }
            } else {
                const float inv = 1.0f / sum;
                for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
                    residual[i] *= inv;
                }
            }
            __syncthreads();
        }
        if (accepted < 0) {
            int next = sampled[row]; // p untouched: sample_f32's own draw from it
            if (modified) {
                float z = 0.0f;
                next = block_draw(ResidualWeight{residual}, vocab, philox_uniform(seed, offset, (unsigned) row, 2u), s_base, s_warp, &s_choice, &z);
            }
            if (threadIdx.x == 0) {
                out[0] = length;
                out[1] = next;
            }
            return;
        }
        if (threadIdx.x == 0) {
            out[2 + length] = accepted;
        }
        length++;
        node = accepted;
        __syncthreads(); // the residual is reused at the next node
    }
}
