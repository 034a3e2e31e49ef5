using Engine.Api;

namespace Engine.Speculative;

/// <summary>The draft sources by the names the CLI and spec-bench use.</summary>
public static class DraftSources
{
    /// <summary>draft, layerskip, lookup, recycle, rsd, online.</summary>
    public static IReadOnlyList<string> Methods { get; } = ["draft", "layerskip", "lookup", "recycle", "rsd", "online"];

    /// <summary>
    /// Creates the draft source <paramref name="method"/> for <paramref name="target"/>. <c>draft</c> and
    /// <c>rsd</c> need <paramref name="draft"/>, a model with the target's vocabulary; <c>layerskip</c>
    /// drafts with the target's first <paramref name="layers"/> layers (default: a third of them).
    /// </summary>
    public static IDraftSource Create(string method, LanguageModel target, LanguageModel? draft = null, int layers = 0)
    {
        switch (method)
        {
            case "draft":
                return new ModelDraftSource(RequireDraft(method, target, draft).Network, target.ContextLength, name: "draft");
            case "rsd":
                return new GumbelTreeSource(RequireDraft(method, target, draft).Network, target.ContextLength);
            case "layerskip":
            {
                int total = target.Config.Layers;
                int k = layers > 0 ? layers : Math.Max(1, total / 3);
                if (k >= total)
                    throw new ArgumentOutOfRangeException(nameof(layers), $"--layers {k} must be fewer than the model's {total} layers");
                return new ModelDraftSource(target.Network, target.ContextLength, k, name: "layerskip");
            }
            case "lookup":
                return new PromptLookupSource();
            case "recycle":
                return new TokenRecyclingSource(target.Config.VocabSize);
            case "online":
                return new OnlineNGramSource();
            default:
                throw new ArgumentException($"unknown speculative method '{method}' (known: {string.Join(", ", Methods)})", nameof(method));
        }
    }

    private static LanguageModel RequireDraft(string method, LanguageModel target, LanguageModel? draft)
    {
        if (draft is null)
            throw new ArgumentException($"method '{method}' needs a draft model (--draft-model)");
        if (draft.Config.VocabSize != target.Config.VocabSize)
            throw new ArgumentException($"the draft model {draft.Path} has {draft.Config.VocabSize} tokens, the target {target.Config.VocabSize}; they must share a vocabulary");
        if (draft.Backend.Name != target.Backend.Name)
            throw new ArgumentException($"the draft model {draft.Path} runs on {draft.Backend.Name}, the target on {target.Backend.Name}; both must be on the same device");
        if (!SameVocabulary(draft, target))
            throw new ArgumentException($"the draft model {draft.Path} has a different vocabulary from the target {target.Path}");
        return draft;
    }

    /// <summary>Spot-checks that both tokenizers map a sample of ids to the same pieces.</summary>
    private static bool SameVocabulary(LanguageModel a, LanguageModel b)
    {
        int vocab = Math.Min(a.Tokenizer.VocabSize, b.Tokenizer.VocabSize);
        for (int id = 0; id < vocab; id += Math.Max(1, vocab / 97))
        {
            if (a.Tokenizer.Piece(id) != b.Tokenizer.Piece(id))
                return false;
        }
        return a.Tokenizer.VocabSize == b.Tokenizer.VocabSize;
    }
}
