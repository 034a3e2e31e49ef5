using Engine.Models;
using Engine.Tensors;

namespace Engine.Backends;

/// <summary>
/// What a model will hold in a backend's memory once loaded and decoding, part by part, computed before
/// anything is allocated: a device backend compares it with its free memory (<see cref="Backend.Reserve"/>)
/// so that a model that cannot fit fails at once, with one line, and leaves nothing behind — instead of
/// failing on the hundredth upload or, worse, at the first long prompt.
/// </summary>
public sealed record MemoryPlan(string Model, IReadOnlyList<(string Part, long Bytes)> Parts)
{
    public long Total => Parts.Sum(p => p.Bytes);

    /// <summary>
    /// The weights as the backend stores them, the KV cache of one session of <paramref name="context"/>
    /// tokens, and the activations of a pass of <paramref name="maxBatch"/> tokens (with the prefill
    /// product's F16 staging of the largest matrix and the split attention's partials for a batch of 8 —
    /// larger verified trees grow them as they come).
    /// </summary>
    public static MemoryPlan For(string model, ModelConfig c, WeightSource weights, Backend backend, int context, int maxBatch)
    {
        long weightBytes = 0, largest = 0;
        foreach (var t in weights.Tensors)
        {
            weightBytes += backend.UploadBytes(t);
            if (t.Dims.Count == 2)
                largest = Math.Max(largest, t.ElementCount);
            else if (t.Dims.Count == 3) // a stack of experts: each is multiplied on its own
                largest = Math.Max(largest, t.Dims[0] * t.Dims[1]);
        }
        const int block = 32; // LlamaModel.CreateKvCache's default block size
        long slots = ((long)context + block - 1) / block * block;
        // windowed layers keep a pool sized by the window (LlamaModel.CreateKvCache), global ones the context
        int windowedLayers = c.SlidingWindow > 0 ? Enumerable.Range(0, c.Layers).Count(c.IsSliding) : 0;
        long windowSlots = Math.Min(slots, ((long)Models.LlamaModel.WindowPoolTokens(Math.Max(c.SlidingWindow, 1), maxBatch, block) + block - 1) / block * block);
        long cache = (slots * (c.Layers - windowedLayers) + windowSlots * windowedLayers) * backend.KvBytesPerTokenLayer(c.KvHeads, c.HeadDim);
        long perRow = 3L * c.Dim + 2L * c.QDim + 2L * c.KvDim + 2L * c.MaxFfnDim
            + (c.Moe is { } moe ? moe.Experts + 1 + (2L + moe.Slots) * c.Dim : 0); // the router's logits, an expert's rows, every expert output
        long activations = 4L * maxBatch * perRow + 4L * c.VocabSize + 2L * (largest + (long)maxBatch * Math.Max(c.MaxFfnDim, c.Dim))
            + 4L * Cpu.Kernels.KvCacheKernels.ScratchFloats(c.Heads, Cpu.Kernels.KvCacheKernels.PrefillMinRows, c.HeadDim, (int)slots); // split attention's partials
        return new(model, [("weights", weightBytes), ($"KV cache ({context} tokens)", cache), ("activations", activations)]);
    }

    /// <summary>"weights 2.1 GiB + KV cache (4096 tokens) 88 MiB + activations 40 MiB".</summary>
    public string Describe() => string.Join(" + ", Parts.Select(p => $"{p.Part} {Size(p.Bytes)}"));

    public static string Size(long bytes) => bytes >= 1L << 30 ? $"{bytes / (double)(1L << 30):0.##} GiB" : $"{(bytes + (1 << 20) - 1) >> 20} MiB";
}

/// <summary>A model does not fit in a device's memory; the message names what was needed and what was free.</summary>
public sealed class DeviceMemoryException(string message) : Exception(message);
