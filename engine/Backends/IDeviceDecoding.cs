using Engine.Sampling;

namespace Engine.Backends;

/// <summary>
/// The decoding steps a backend runs where the logits are, so that a decoding step sends the host a
/// few token ids instead of a vocabulary of floats per row: greedy argmax, fused sampling
/// (kernels/sampling.cu), the successors Token Recycling records, and draft-verify acceptance
/// (kernels/acceptance.cu). Logits come from <see cref="Models.LlamaModel.ForwardOnDevice"/>. The CUDA
/// backend implements it; the CPU backend samples on the host with <see cref="SamplerChain"/>.
/// </summary>
public interface IDeviceDecoding
{
    /// <summary>The index of each row's largest logit (the first on ties).</summary>
    void ArgMax(Activation logits, Span<int> tokens);

    /// <summary>
    /// One draw per row through temperature, top-k, top-p and min-p (<see cref="FusedSampling"/>); row r
    /// draws Philox (seed, offset, r). Throws when a row has no finite logit.
    /// </summary>
    void Sample(Activation logits, FusedSamplingParameters parameters, ulong seed, ulong offset, Span<int> tokens);

    /// <summary>Each row's <paramref name="k"/> largest logits' indices, largest first (−1 past the finite ones): ids [rows × k].</summary>
    void TopKIds(Activation logits, int k, Span<int> ids);

    /// <summary>
    /// Greedy acceptance of a verified tree (rows: 0 after the root, i + 1 after node i; parent[i] = −1
    /// for the root's children): the accepted nodes into <paramref name="path"/>, the next token returned.
    /// </summary>
    int AcceptGreedy(Activation logits, ReadOnlySpan<int> parent, ReadOnlySpan<int> token, List<int> path);

    /// <summary>
    /// Recursive rejection sampling of a verified tree against the rows' fused-sampling distributions.
    /// <paramref name="qrow"/>[r] names the row of <paramref name="q"/> (host, [*, vocab]) that node r − 1's
    /// children (the root's for r = 0) were drawn from, −1 when they were chosen deterministically;
    /// <paramref name="draw"/>[r] is how (0 deterministic, 1 independent, 2 without replacement).
    /// </summary>
    int AcceptSampled(Activation logits, FusedSamplingParameters parameters, ulong seed, ulong offset, ReadOnlySpan<int> parent,
        ReadOnlySpan<int> token, ReadOnlySpan<int> qrow, ReadOnlySpan<int> draw, ReadOnlySpan<float> q, List<int> path);
}
