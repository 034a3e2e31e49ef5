using Engine.Formats;
using Engine.Formats.Gguf;
using Engine.Models;
using Engine.Tensors;
using Engine.Tokenizers;

namespace Engine.Conversion;

/// <summary>
/// An HF model folder as one GGUF file (<c>engine convert</c>): the config as <c>{arch}.*</c> keys, the
/// tokenizer as <c>tokenizer.ggml.*</c> (<see cref="TokenizerLoader.ToGguf"/>), the tensors under their GGUF
/// names in their own types (quantize afterwards with <c>engine quantize</c>). For the families whose GGUF
/// RoPE pairs adjacent dimensions (llama, Mixtral, granite), q and k rows are permuted as llama.cpp's
/// converter permutes them (HF stores them for rotate-half). Families whose settings have no key here
/// (Gemma, Phi-3, OLMo 2, SmolLM3, RoPE scaling tables) are refused by name: they load from the folder.
/// BlockFFN's checkpoints become our <c>blockffn</c> layout (blocks stacked as they lie), with MLA as
/// llama.cpp's deepseek2 keys it.
/// </summary>
public static class HfConverter
{
    public static readonly IReadOnlyList<string> Architectures = ["llama", "qwen2", "qwen3", "qwen2moe", "qwen3moe", "granite", "blockffn"];

    /// <param name="progress">Told the tensor bytes written so far and in all, after each tensor.</param>
    public static unsafe void Convert(string folder, string output, IProgress<(long Done, long Total)>? progress = null)
    {
        string configPath = Path.Combine(folder, "config.json");
        var c = ModelConfigReader.FromHf(configPath);
        string a = c.Architecture;
        if (!Architectures.Contains(a))
            throw new ModelFormatException(configPath, "architectures", $"converting {a} is not supported (supported: {string.Join(", ", Architectures)}); the folder loads as it is");
        if (c.RopeFreqFactors is not null || c.LongRope is not null)
            throw new ModelFormatException(configPath, "rope_scaling", "per-frequency RoPE factors are not converted; the folder loads as it is");
        using var weights = new SafetensorsWeightSource(folder, a);
        var w = new GgufWriter { Progress = progress };
        w.Add("general.architecture", a);
        w.Add("general.name", Path.GetFileName(Path.GetFullPath(folder).TrimEnd(Path.DirectorySeparatorChar)));
        w.Add($"{a}.context_length", (uint)c.ContextLength);
        w.Add($"{a}.embedding_length", (uint)c.Dim);
        w.Add($"{a}.block_count", (uint)c.Layers);
        w.Add($"{a}.feed_forward_length", (uint)c.FfnDim);
        w.Add($"{a}.attention.head_count", (uint)c.Heads);
        w.Add($"{a}.attention.head_count_kv", (uint)c.KvHeads);
        if (c.HeadDim != c.Dim / c.Heads || c.Mla is not null)
            w.Add($"{a}.attention.key_length", (uint)c.HeadDim);
        if (c.HeadDim != c.Dim / c.Heads && c.Mla is null)
            w.Add($"{a}.attention.value_length", (uint)c.HeadDim);
        w.Add($"{a}.attention.layer_norm_rms_epsilon", c.RmsNormEps);
        w.Add($"{a}.rope.freq_base", c.RopeTheta);
        w.Add($"{a}.rope.dimension_count", (uint)c.RopeDims);
        if (c.RopeFreqScale != 1f)
        {
            w.Add($"{a}.rope.scaling.type", "linear");
            w.Add($"{a}.rope.scaling.factor", 1f / c.RopeFreqScale);
        }
        if (c.SlidingWindow > 0)
            w.Add($"{a}.attention.sliding_window", (uint)c.SlidingWindow);
        if (c.EmbeddingScale != 1f || c.ResidualScale != 1f || c.LogitScale != 1f || c.AttentionScale > 0)
        {
            if (a is not ("granite" or "blockffn"))
                throw new ModelFormatException(configPath, "config", $"{a} with multipliers has no GGUF keys for them");
            w.Add($"{a}.embedding_scale", c.EmbeddingScale);
            w.Add($"{a}.residual_scale", c.ResidualScale);
            w.Add($"{a}.logit_scale", c.LogitScale);
            if (c.AttentionScale > 0)
                w.Add($"{a}.attention.scale", c.AttentionScale);
        }
        if (c.Moe is { } moe)
        {
            w.Add($"{a}.expert_count", (uint)moe.Experts);
            w.Add($"{a}.expert_used_count", (uint)moe.Used);
            if (a != "llama")
                w.Add($"{a}.expert_feed_forward_length", (uint)moe.ExpertFfn);
            if (moe.SharedFfn > 0)
                w.Add($"{a}.expert_shared_feed_forward_length", (uint)moe.SharedFfn);
            w.Add($"{a}.expert_weights_norm", moe.NormalizeWeights);
        }
        if (c.BlockFfn is { } blocks)
        {
            w.Add($"{a}.expert_count", (uint)blocks.Blocks);
            w.Add($"{a}.expert_feed_forward_length", (uint)blocks.BlockSize);
            w.Add($"{a}.router_normalization", blocks.Normalization.ToString().ToLowerInvariant());
            w.Add($"{a}.router_norm_scale", blocks.NormScale);
        }
        if (c.Mla is { } mla)
        {
            if (mla.QLoraRank > 0)
                w.Add($"{a}.attention.q_lora_rank", (uint)mla.QLoraRank);
            w.Add($"{a}.attention.kv_lora_rank", (uint)mla.KvLoraRank);
            w.Add($"{a}.attention.value_length", (uint)mla.VDim);
        }
        TokenizerLoader.ToGguf(folder, w);

        // GGUF llama and granite pair adjacent dims for RoPE: q and k rows go from HF's halves to pairs
        bool permute = c.RopeStyle == RopeStyle.NeoX && a is "llama" or "granite";
        foreach (var t in weights.Tensors)
        {
            int heads = t.Name.EndsWith(".attn_q.weight", StringComparison.Ordinal) || t.Name.EndsWith(".attn_q.bias", StringComparison.Ordinal) ? c.Heads
                : t.Name.EndsWith(".attn_k.weight", StringComparison.Ordinal) || t.Name.EndsWith(".attn_k.bias", StringComparison.Ordinal) ? c.KvHeads : 0;
            var view = t;
            long rowBytes = t.Dims.Count == 1 ? GgmlTypeInfo.RowBytes(t.Type, 1) : t.RowBytes;
            w.AddTensor(t.Name, t.Type, [.. t.Dims], t.ByteSize, stream =>
            {
                if (!permute || heads == 0)
                {
                    var buffer = new byte[Math.Min(t.ByteSize, 1 << 24)];
                    for (long at = 0; at < t.ByteSize; at += buffer.Length)
                    {
                        int count = (int)Math.Min(buffer.Length, t.ByteSize - at);
                        new ReadOnlySpan<byte>(view.Data + at, count).CopyTo(buffer);
                        stream.Write(buffer, 0, count);
                    }
                    return;
                }
                // GGUF row h·hd + 2i + j is HF row h·hd + j·hd/2 + i (the inverse of HF's permutation)
                long rows = t.Dims.Count == 1 ? t.ElementCount : t.RowCount;
                int hd = (int)(rows / heads), half = hd / 2;
                var row = new byte[rowBytes];
                for (long r = 0; r < rows; r++)
                {
                    long h = r / hd, within = r % hd, i = within / 2, j = within % 2;
                    long source = h * hd + j * half + i;
                    new ReadOnlySpan<byte>(view.Data + source * rowBytes, (int)rowBytes).CopyTo(row);
                    stream.Write(row, 0, row.Length);
                }
            });
        }
        w.Write(output);
    }
}
