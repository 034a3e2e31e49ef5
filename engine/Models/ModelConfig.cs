namespace Engine.Models;

/// <summary>How RoPE pairs up the dimensions of a head.</summary>
public enum RopeStyle
{
    /// <summary>Adjacent pairs (x[2i], x[2i+1]): GGUF llama weights (llama.cpp's LLAMA_ROPE_TYPE_NORM).</summary>
    Normal,
    /// <summary>Halves (x[i], x[i + d/2]) — "rotate_half": HF weights, GGUF qwen2 (LLAMA_ROPE_TYPE_NEOX).</summary>
    NeoX,
}

/// <summary>
/// Hyper-parameters of a Llama-family decoder (Llama 2/3, Mistral, Qwen2): what the forward pass needs
/// to know about shapes and positional encoding. Read from GGUF metadata or an HF <c>config.json</c>
/// by <see cref="ModelConfigReader"/>; biases and tied heads are decided from the tensors present.
/// </summary>
public sealed record ModelConfig
{
    /// <summary>Architecture name as GGUF spells it ("llama", "qwen2").</summary>
    public required string Architecture { get; init; }
    public required int VocabSize { get; init; }
    /// <summary>Model width (embedding length).</summary>
    public required int Dim { get; init; }
    public required int Layers { get; init; }
    public required int Heads { get; init; }
    /// <summary>Key/value heads; fewer than <see cref="Heads"/> means grouped-query attention.</summary>
    public required int KvHeads { get; init; }
    public required int HeadDim { get; init; }
    /// <summary>Hidden width of the SwiGLU feed-forward network.</summary>
    public required int FfnDim { get; init; }
    public required int ContextLength { get; init; }
    public required float RmsNormEps { get; init; }
    public required float RopeTheta { get; init; }
    public required RopeStyle RopeStyle { get; init; }
    /// <summary>Number of leading dimensions of each head that RoPE rotates (usually all of them).</summary>
    public required int RopeDims { get; init; }
    /// <summary>Positions are multiplied by this before rotation (linear RoPE scaling: 1/factor).</summary>
    public float RopeFreqScale { get; init; } = 1f;
    /// <summary>Per-frequency divisors (Llama 3 RoPE scaling), <see cref="RopeDims"/>/2 of them, or null.</summary>
    public float[]? RopeFreqFactors { get; init; }

    public int QDim => Heads * HeadDim;

    public int KvDim => KvHeads * HeadDim;

    /// <summary>Checks the numbers against each other; <paramref name="source"/> names the file for errors.</summary>
    public void Validate(string source)
    {
        void Positive(string name, long value)
        {
            if (value <= 0)
                throw new Formats.ModelFormatException(source, name, $"{value} must be positive");
        }
        Positive("vocab size", VocabSize);
        Positive("embedding length", Dim);
        Positive("block count", Layers);
        Positive("head count", Heads);
        Positive("head count kv", KvHeads);
        Positive("head dim", HeadDim);
        Positive("feed forward length", FfnDim);
        Positive("context length", ContextLength);
        const int limit = 1 << 20;
        foreach (var (name, value) in new[] { ("vocab size", VocabSize), ("embedding length", Dim), ("feed forward length", FfnDim), ("head count", Heads), ("block count", Layers) })
        {
            if (value > limit * 4)
                throw new Formats.ModelFormatException(source, name, $"{value} is implausibly large");
        }
        if (Heads % KvHeads != 0)
            throw new Formats.ModelFormatException(source, "head count kv", $"{Heads} heads are not a multiple of {KvHeads} kv heads");
        if (RopeDims <= 0 || RopeDims > HeadDim || RopeDims % 2 != 0)
            throw new Formats.ModelFormatException(source, "rope dimension count", $"{RopeDims} must be even and between 2 and the head dim {HeadDim}");
        if (!(RmsNormEps > 0) || !float.IsFinite(RmsNormEps))
            throw new Formats.ModelFormatException(source, "rms norm epsilon", $"{RmsNormEps} must be a positive number");
        if (!(RopeTheta > 0) || !float.IsFinite(RopeTheta))
            throw new Formats.ModelFormatException(source, "rope freq base", $"{RopeTheta} must be a positive number");
        if (!(RopeFreqScale > 0) || !float.IsFinite(RopeFreqScale))
            throw new Formats.ModelFormatException(source, "rope scaling factor", $"1/{RopeFreqScale} must be a positive number");
        if (RopeFreqFactors is { } f && (f.Length != RopeDims / 2 || f.Any(x => !(x > 0) || !float.IsFinite(x))))
            throw new Formats.ModelFormatException(source, "rope frequency factors", $"need {RopeDims / 2} positive values, got {f.Length}");
    }
}
