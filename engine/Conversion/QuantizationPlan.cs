using Engine.Tensors;

namespace Engine.Conversion;

/// <summary>
/// File types as llama.cpp names and numbers them (<c>enum llama_ftype</c>, stored as
/// <c>general.file_type</c>): the mixture of tensor types a quantized model uses.
/// </summary>
public enum LlamaFileType
{
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q8_0 = 7,
    Q5_0 = 8,
    Q5_1 = 9,
    Q4_K_S = 14,
    Q4_K_M = 15,
    Q5_K_S = 16,
    Q5_K_M = 17,
    Q6_K = 18,
    BF16 = 32,
}

/// <summary>
/// Which type each tensor of a Llama-family model gets for a file type — llama.cpp's
/// <c>llama_tensor_get_type</c> rules for the types above, so our files have the mixture users expect
/// (Q4_K_M keeps attn_v and some ffn_down in Q6_K and the head in Q6_K) — including its fallbacks for
/// rows that do not divide into the type's blocks.
/// </summary>
public static class QuantizationPlan
{
    public static LlamaFileType Parse(string name) =>
        Enum.TryParse<LlamaFileType>(name.Trim().ToUpperInvariant(), out var t) && Enum.IsDefined(t)
            ? t
            : throw new ArgumentException($"'{name}' is not a supported type (supported: {string.Join(", ", Enum.GetNames<LlamaFileType>())})");

    /// <summary>The type most tensors get.</summary>
    public static GgmlType DefaultType(LlamaFileType fileType) => fileType switch
    {
        LlamaFileType.F32 => GgmlType.F32,
        LlamaFileType.F16 => GgmlType.F16,
        LlamaFileType.BF16 => GgmlType.BF16,
        LlamaFileType.Q4_0 => GgmlType.Q4_0,
        LlamaFileType.Q4_1 => GgmlType.Q4_1,
        LlamaFileType.Q5_0 => GgmlType.Q5_0,
        LlamaFileType.Q5_1 => GgmlType.Q5_1,
        LlamaFileType.Q8_0 => GgmlType.Q8_0,
        LlamaFileType.Q4_K_S or LlamaFileType.Q4_K_M => GgmlType.Q4_K,
        LlamaFileType.Q5_K_S or LlamaFileType.Q5_K_M => GgmlType.Q5_K,
        LlamaFileType.Q6_K => GgmlType.Q6_K,
        _ => throw new ArgumentOutOfRangeException(nameof(fileType)),
    };

    /// <summary>Whether a tensor is a weight matrix to quantize (1-D tensors — norms, biases — stay as they are).</summary>
    public static bool IsQuantizable(string name, IReadOnlyList<long> dims) =>
        name.EndsWith("weight", StringComparison.Ordinal) && dims.Count >= 2 && !IsRouter(name);

    /// <summary>
    /// A MoE router (<c>ffn_gate_inp</c>, and Qwen2-MoE's shared-expert gate <c>ffn_gate_inp_shexp</c>): kept in
    /// F32 in every file type, as llama.cpp's converter and quantizer keep it — a few KiB, and its logits
    /// pick the experts.
    /// </summary>
    public static bool IsRouter(string name) => name.Contains(".ffn_gate_inp", StringComparison.Ordinal);

    /// <summary>
    /// The type of tensor <paramref name="name"/> (ggml dims, innermost first) in a model of
    /// <paramref name="layers"/> blocks, one of which it belongs to (or none).
    /// </summary>
    public static GgmlType TypeFor(string name, IReadOnlyList<long> dims, LlamaFileType fileType, int layers, bool hasOutput)
    {
        var type = DefaultType(fileType);
        if (IsRouter(name))
            return GgmlType.F32;
        if (type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16)
            return type;
        int layer = LayerOf(name);
        bool MoreBits(int i) => i < layers / 8 || i >= 7 * layers / 8 || (i - layers / 8) % 3 == 2;

        if (name == "output.weight" || (!hasOutput && name == "token_embd.weight"))
        {
            // The head decides every token: llama.cpp gives it Q6_K unless rows do not fit 256-blocks.
            if (dims[0] % BlockSize(type) != 0)
                type = GgmlType.Q8_0;
            else if (type != GgmlType.Q8_0)
                type = GgmlType.Q6_K;
        }
        else if (name.Contains("attn_v.weight", StringComparison.Ordinal) && layer >= 0)
        {
            if (fileType is LlamaFileType.Q4_K_M or LlamaFileType.Q5_K_M && MoreBits(layer))
                type = GgmlType.Q6_K;
            else if (fileType == LlamaFileType.Q4_K_S && layer < 4)
                type = GgmlType.Q5_K;
        }
        else if (name.Contains("ffn_down", StringComparison.Ordinal) && layer >= 0)
        {
            if (fileType is LlamaFileType.Q4_K_M or LlamaFileType.Q5_K_M && MoreBits(layer))
                type = GgmlType.Q6_K;
            else if (fileType == LlamaFileType.Q4_K_S && layer < layers / 8)
                type = GgmlType.Q5_K;
        }

        if (dims[0] % BlockSize(type) != 0)
        {
            type = type switch
            {
                GgmlType.Q4_K => GgmlType.Q5_0,
                GgmlType.Q5_K => GgmlType.Q5_1,
                GgmlType.Q6_K => GgmlType.Q8_0,
                _ => GgmlType.F16,
            };
            if (dims[0] % BlockSize(type) != 0)
                type = GgmlType.F16;
        }
        return type;
    }

    private static int BlockSize(GgmlType type) => GgmlTypeInfo.Layout(type)!.Value.BlockSize;

    /// <summary>N for "blk.N.…", else -1.</summary>
    public static int LayerOf(string name)
    {
        if (!name.StartsWith("blk.", StringComparison.Ordinal))
            return -1;
        int end = name.IndexOf('.', 4);
        return end > 4 && int.TryParse(name.AsSpan(4, end - 4), out int layer) ? layer : -1;
    }
}
