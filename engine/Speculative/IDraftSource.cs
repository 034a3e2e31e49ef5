using Engine.Sampling;

namespace Engine.Speculative;

/// <summary>What a draft source is asked for: children (and their descendants) of the root, the last context token.</summary>
public readonly struct DraftRequest
{
    /// <summary>Every token so far; the last one is the root of the draft and not yet in the target's cache.</summary>
    public required IReadOnlyList<int> Context { get; init; }

    /// <summary>Most nodes the tree may have.</summary>
    public required int Budget { get; init; }

    /// <summary>
    /// The target's sampler: drafts shape their own logits with it (so q and p see the same temperature,
    /// top-k and top-p) and draw with its generator. Greedy when the target decodes greedily.
    /// </summary>
    public required SamplerChain Sampler { get; init; }
}

/// <summary>
/// Proposes draft trees for speculative decoding. Each method from the literature is one small type
/// behind this interface: <see cref="ModelDraftSource"/> (a separate draft model, or the target's own
/// first layers), <see cref="PromptLookupSource"/>, <see cref="TokenRecyclingSource"/>,
/// <see cref="GumbelTreeSource"/> and <see cref="OnlineNGramSource"/>.
/// </summary>
public interface IDraftSource : IDisposable
{
    string Name { get; }

    /// <summary>A new generation starts from <paramref name="context"/>; per-generation state is reset, learned state kept.</summary>
    void Begin(IReadOnlyList<int> context);

    /// <summary>Fills <paramref name="tree"/> (cleared by the caller) with at most <see cref="DraftRequest.Budget"/> nodes.</summary>
    void Draft(DraftRequest request, DraftTree tree);

    /// <summary>
    /// The verification of the last draft: the accepted nodes, the target's next token, and the target's
    /// logits for every tree row (row 0 after the root, row i + 1 after node i). <paramref name="context"/>
    /// already includes the accepted tokens and the next token.
    /// </summary>
    void Observe(DraftTree tree, IReadOnlyList<int> path, int next, ReadOnlySpan<float> logits, int vocab, IReadOnlyList<int> context);

    /// <summary>
    /// Whether <see cref="Observe"/> reads the logits. On a GPU they stay on the device, and a source that
    /// does not read them is handed an empty span instead of a download of rows × vocabulary floats.
    /// </summary>
    bool ObservesLogits => true;
}

/// <summary>
/// A source that learns only each verified row's top-k tokens (Token Recycling): on a GPU the decoder
/// computes them there (kernels/sampling.cu's <c>top_k_ids_f32</c>) and hands over k ids per row.
/// </summary>
public interface ITopKObserver
{
    /// <summary>How many of each row's largest logits the source records.</summary>
    int K { get; }

    /// <summary>As <see cref="IDraftSource.Observe"/>, with each row's top-k ids (largest first, −1 where none) instead of its logits: ids [rows × K].</summary>
    void ObserveTopK(DraftTree tree, IReadOnlyList<int> path, int next, ReadOnlySpan<int> ids, IReadOnlyList<int> context);
}
