using Engine.Sampling;

namespace Engine.Cuda.Kernels;

/// <summary>
/// Typed launcher for kernels/sampling.cu. CPU reference: <see cref="FusedSampling"/> (SampleF32) and
/// <see cref="FusedSampling.TopKIdsF32"/>.
/// </summary>
public static class Sampling
{
    private const string File = "sampling";

    /// <summary>
    /// sample_f32: one draw per row of <paramref name="logits"/> [rows, vocab] through temperature, top-k,
    /// top-p and min-p; row r draws Philox (seed, offset, r, 0). Writes token[r] (−1: no finite logit),
    /// prob[r], and, where given, queryProb[r] for query[r], the distributions [rows, vocab] and the rows'
    /// stats [rows, 3] (<see cref="FusedSampling.RowStats"/>).
    /// </summary>
    public static unsafe void SampleF32(GpuDevice device, DeviceSpan<float> logits, int rows, int vocab, FusedSamplingParameters parameters,
        ulong seed, ulong offset, DeviceSpan<int> query, DeviceSpan<int> token, DeviceSpan<float> prob, DeviceSpan<float> queryProb,
        DeviceSpan<float> probs, DeviceSpan<float> stats = default)
    {
        parameters.Validate();
        if (rows <= 0 || vocab <= 0 || rows > 65535 || logits.Length < (long)rows * vocab || token.Length < rows || prob.Length < rows)
            throw new ArgumentException($"sample_f32: logits [{rows}, {vocab}] in {logits.Length} elements, token {token.Length}, prob {prob.Length}");
        if (!query.IsEmpty && (query.Length < rows || queryProb.Length < rows))
            throw new ArgumentException($"sample_f32: {query.Length} queries and {queryProb.Length} query probabilities for {rows} rows");
        if (!probs.IsEmpty && probs.Length < (long)rows * vocab)
            throw new ArgumentException($"sample_f32: a distribution buffer of {probs.Length} floats for [{rows}, {vocab}]");
        if (!stats.IsEmpty && stats.Length < 3L * rows)
            throw new ArgumentException($"sample_f32: {stats.Length} floats of row stats for {rows} rows (3 each)");
        var fn = device.Function(File, "sample_f32");
        IntPtr pl = logits.Pointer, pq = query.IsEmpty ? IntPtr.Zero : query.Pointer, pt = token.Pointer, pp = prob.Pointer,
            pqp = query.IsEmpty ? IntPtr.Zero : queryProb.Pointer, pd = probs.IsEmpty ? IntPtr.Zero : probs.Pointer,
            pst = stats.IsEmpty ? IntPtr.Zero : stats.Pointer;
        float invTemp = 1 / parameters.Temperature, topP = parameters.TopP, minP = parameters.MinP;
        int topK = parameters.TopK;
        void** args = stackalloc void*[14];
        args[0] = &pl;
        args[1] = &vocab;
        args[2] = &invTemp;
        args[3] = &topK;
        args[4] = &topP;
        args[5] = &minP;
        args[6] = &seed;
        args[7] = &offset;
        args[8] = &pq;
        args[9] = &pt;
        args[10] = &pp;
        args[11] = &pqp;
        args[12] = &pd;
        args[13] = &pst;
        device.Launch(fn, (rows, 1, 1), (FusedSampling.Threads, 1, 1), 0, args);
    }

    /// <summary>top_k_ids_f32: ids [rows, k] = each row's k largest logits' indices, largest first (−1 past the finite ones).</summary>
    public static unsafe void TopKIdsF32(GpuDevice device, DeviceSpan<float> logits, int rows, int vocab, int k, DeviceSpan<int> ids)
    {
        if (rows <= 0 || vocab <= 0 || k <= 0 || k > 64 || rows > 65535 || logits.Length < (long)rows * vocab || ids.Length < (long)rows * k)
            throw new ArgumentException($"top_k_ids_f32: logits [{rows}, {vocab}] in {logits.Length} elements, k {k} (1..64), ids {ids.Length}");
        var fn = device.Function(File, "top_k_ids_f32");
        IntPtr pl = logits.Pointer, pi = ids.Pointer;
        void** args = stackalloc void*[4];
        args[0] = &pl;
        args[1] = &vocab;
        args[2] = &k;
        args[3] = &pi;
        device.Launch(fn, (rows, 1, 1), (FusedSampling.Threads, 1, 1), 0, args);
    }
}
