using Engine.Backends;
using Engine.Backends.Cpu.Kernels;

namespace Engine.Cuda.Kernels;

/// <summary>
/// Typed launcher for kernels/attention.cu (flash-decoding split over the keys, then a combine).
/// CPU reference: <see cref="Backends.Cpu.Kernels.Attention"/> (the CPU backend's attention) and
/// <see cref="Backends.Cpu.Kernels.KvCacheKernels.AttentionF32"/>, which runs this launcher's
/// split-and-combine arithmetic on the host.
/// </summary>
public static class Attention
{
    private const string File = "attention";

    /// <summary>The largest head the kernel holds (ATTN_MAX_HEAD_DIM).</summary>
    public const int MaxHeadDim = 256;

    /// <summary>How attention over at most <paramref name="keys"/> keys per row is split (the CPU reference's plan).</summary>
    public static (int Splits, int Chunk) Plan(int keys) => KvCacheKernels.Plan(keys);

    /// <summary>Floats of partial results a launch of (heads, rows) needs over at most <paramref name="maxKeys"/> keys.</summary>
    public static long ScratchFloats(int heads, int rows, int headDim, int maxKeys) => KvCacheKernels.ScratchFloats(heads, rows, headDim, maxKeys);

    /// <summary>Query rows per block of attention_prefill_tc_f16.</summary>
    public const int TensorCoreRows = 64;

    /// <summary>
    /// Whether a batch takes the tensor-core prefill kernel: a batch that need not be batch-invariant (as
    /// for the tiled kernel), an F16 cache, heads a multiple of 16 up to 128, and a GPU with tensor cores
    /// (sm_70 and later). It rounds the queries and probabilities to binary16 for its products.
    /// </summary>
    public static bool UsesTensorCores(GpuDevice device, bool f16Cache, int rows, int headDim, bool batchInvariant) =>
        f16Cache && KvCacheKernels.UsesPrefillKernel(rows, headDim, batchInvariant) && headDim % 16 == 0 && headDim <= 128 && device.Info.Major >= 7;

    /// <summary>
    /// The checks every attention launcher makes before launching: heads grouped over the KV heads, the
    /// head within the kernel's <paramref name="maxHeadDim"/>, q and dst large enough, the layer in the
    /// cache, the table covering prefix + n keys, the cache holding its blocks, the mask's words.
    /// </summary>
    internal static void CheckShapes<T>(string kernel, int maxHeadDim, DeviceSpan<float> q, int n, int heads, DeviceSpan<T> cache, int blocks,
        KvLayout layout, int layer, DeviceSpan<int> table, int tableLength, int prefix, DeviceSpan<ulong> mask, int words, DeviceSpan<float> dst)
        where T : unmanaged
    {
        int hd = layout.HeadDim;
        if (n <= 0 || heads <= 0 || heads % layout.KvHeads != 0)
            throw new ArgumentException($"{kernel}: {n} rows of {heads} heads over {layout.KvHeads} kv heads");
        if (hd > maxHeadDim)
            throw new ArgumentOutOfRangeException(nameof(layout), $"{kernel}: head dimension {hd} exceeds {maxHeadDim}");
        long cols = (long)heads * hd;
        if (q.Length < n * cols || dst.Length < n * cols)
            throw new ArgumentException($"{kernel}: q {q.Length} and dst {dst.Length} elements for [{n}, {cols}]");
        if ((uint)layer >= (uint)layout.Layers || prefix < 0)
            throw new ArgumentOutOfRangeException(nameof(layer), $"{kernel}: layer {layer} of {layout.Layers}, prefix {prefix}");
        int keys = prefix + n;
        if ((keys + layout.BlockSize - 1) / layout.BlockSize > tableLength || table.Length < tableLength)
            throw new ArgumentException($"{kernel}: {keys} keys need more than the {tableLength} blocks of the table");
        if (cache.Length < blocks * KvCache.BlockFloats(layout))
            throw new ArgumentException($"{kernel}: the cache holds {cache.Length} elements for {blocks} blocks");
        if (!mask.IsEmpty && (words != (n + 63) / 64 || mask.Length < (long)n * words))
            throw new ArgumentException($"{kernel}: a mask of {mask.Length} words ({words} per row) for {n} rows");
        if (n > 65535)
            throw new ArgumentOutOfRangeException(nameof(n), $"{kernel}: {n} rows exceed the grid's 65535");
    }

    /// <summary>
    /// tree_attention_f32 + attention_combine_f32 for heads up to 128 (attention_f32 + attention_combine_f32
    /// for larger heads; for a batch of more than 8 rows with heads up to 128 that need not be
    /// batch-invariant, attention_prefill_f32): dst[i, h·hd..] = softmax over the keys row i sees of (q_i,h · k)·scale, times v. Row i sees slots 0..prefix-1 and batch slot prefix + j where the mask
    /// allows (causal when <paramref name="mask"/> is empty; else words per row <paramref name="words"/>),
    /// none below its <paramref name="windowStarts"/> entry (sliding-window attention; empty: no window;
    /// a mask must already exclude what the window does). Scores are soft-capped when
    /// <paramref name="softCap"/> &gt; 0 (Gemma 2). <paramref name="maxRanks"/>, when positive, bounds the
    /// keys any row sees (under a window: prefix + n − the smallest start), so that the splits and their
    /// scratch follow the window, not the sequence. The cache holds float32 (<typeparamref name="T"/> = float) or binary16 (Half) elements.
    /// </summary>
    public static unsafe void AttentionF32<T>(GpuDevice device, DeviceSpan<float> q, int n, int heads, DeviceSpan<T> cache, int blocks,
        KvLayout layout, int layer, DeviceSpan<int> table, int tableLength, int prefix, DeviceSpan<ulong> mask, int words, float scale,
        DeviceSpan<float> scratch, DeviceSpan<float> dst, bool batchInvariant = false, bool tensorCores = false, DeviceSpan<uint> mergeCounters = default,
        float softCap = 0, DeviceSpan<int> windowStarts = default, int maxRanks = 0)
        where T : unmanaged
    {
        string suffix = KvCache.Suffix<T>(); // the cache's elements: attention_f32 or attention_f16, …
        int hd = layout.HeadDim;
        CheckShapes("attention_" + suffix, MaxHeadDim, q, n, heads, cache, blocks, layout, layer, table, tableLength, prefix, mask, words, dst);
        int keys = maxRanks > 0 ? Math.Min(maxRanks, prefix + n) : prefix + n; // splits cover the most keys a row sees
        CheckLimits("attention_" + suffix, n, softCap, windowStarts);
        IntPtr pq = q.Pointer, pc = cache.Pointer, pt = table.Pointer, pm = mask.IsEmpty ? IntPtr.Zero : mask.Pointer, pd = dst.Pointer;
        IntPtr pw = windowStarts.IsEmpty ? IntPtr.Zero : windowStarts.Pointer;
        int layers = layout.Layers, kvHeads = layout.KvHeads, blockSize = layout.BlockSize;
        bool tc = tensorCores && UsesTensorCores(device, typeof(T) == typeof(Half), n, hd, batchInvariant);
        if (tc || KvCacheKernels.UsesPrefillKernel(n, hd, batchInvariant))
        {
            // A batch: the tensor-core kernel over an F16 cache, 64 rows per block (attention_tc.cu), or the
            // tiled kernel, 16 rows per block; each key and value is read once per block. Same arguments.
            var prefill = tc ? device.Function("attention_tc", "attention_prefill_tc_f16") : device.Function(File, "attention_prefill_" + suffix);
            int rowsPerBlock = tc ? TensorCoreRows : KvCacheKernels.PrefillRows;
            void** pargs = stackalloc void*[16];
            pargs[0] = &pq;
            pargs[1] = &pc;
            pargs[2] = &pt;
            pargs[3] = &layer;
            pargs[4] = &layers;
            pargs[5] = &kvHeads;
            pargs[6] = &hd;
            pargs[7] = &blockSize;
            pargs[8] = &prefix;
            pargs[9] = &n;
            pargs[10] = &pm;
            pargs[11] = &words;
            pargs[12] = &scale;
            pargs[13] = &softCap;
            pargs[14] = &pw;
            pargs[15] = &pd;
            device.Launch(prefill, (heads, (n + rowsPerBlock - 1) / rowsPerBlock, 1), (128, 1, 1), 0, pargs);
            return;
        }
        if (TreeAttention.Supports(hd))
        {
            // Decoding and exact verification: the tree kernel (a decoding token is the one-query tree),
            // so a verified row is computed exactly as the same token decoded alone.
            TreeAttention.TreeAttentionF32(device, q, n, heads, cache, blocks, layout, layer, table, tableLength, prefix, mask, words, scale,
                scratch, dst, mergeCounters, softCap, windowStarts, maxRanks);
            return;
        }
        var (splits, chunk) = Plan(keys);
        if (splits > 65535)
            throw new ArgumentOutOfRangeException(nameof(prefix), $"attention_f32: {keys} keys need {splits} splits, more than the grid's 65535");
        long parts = (long)n * heads * splits;
        if (scratch.Length < parts * (hd + 2))
            throw new ArgumentException($"attention_f32: scratch of {scratch.Length} floats, {parts} partials need {parts * (hd + 2)}");
        var accumulators = scratch.Slice(0, parts * hd);
        var maxSums = scratch.Slice(parts * hd, parts * 2);

        var fn = device.Function(File, "attention_" + suffix);
        IntPtr pa = accumulators.Pointer, pml = maxSums.Pointer;
        void** args = stackalloc void*[18];
        args[0] = &pq;
        args[1] = &pc;
        args[2] = &pt;
        args[3] = &layer;
        args[4] = &layers;
        args[5] = &kvHeads;
        args[6] = &hd;
        args[7] = &blockSize;
        args[8] = &prefix;
        args[9] = &n;
        args[10] = &pm;
        args[11] = &words;
        args[12] = &scale;
        args[13] = &softCap;
        args[14] = &pw;
        args[15] = &chunk;
        args[16] = &pa;
        args[17] = &pml;
        device.Launch(fn, (heads, n, splits), (128, 1, 1), 0, args);
        Combine(device, pa, pml, pd, n, heads, hd, splits);
    }

    /// <summary>
    /// The checks of the two options beyond the scale: a soft cap that is 0 or a positive number, and
    /// window starts (one per row) or none.
    /// </summary>
    internal static void CheckLimits(string kernel, int n, float softCap, DeviceSpan<int> windowStarts)
    {
        if (!(softCap >= 0) || !float.IsFinite(softCap))
            throw new ArgumentOutOfRangeException(nameof(softCap), $"{kernel}: a soft cap of {softCap} must be 0 (none) or a positive number");
        if (!windowStarts.IsEmpty && windowStarts.Length < n)
            throw new ArgumentException($"{kernel}: {windowStarts.Length} window starts for {n} rows");
    }

    /// <summary>attention_combine_f32: merges the splits' partials (pa: values, pml: max and sum) of every (row, head) into dst.</summary>
    internal static unsafe void Combine(GpuDevice device, IntPtr pa, IntPtr pml, IntPtr pd, int n, int heads, int hd, int splits)
    {
        var combine = device.Function(File, "attention_combine_f32");
        void** cargs = stackalloc void*[5];
        cargs[0] = &pa;
        cargs[1] = &pml;
        cargs[2] = &pd;
        cargs[3] = &hd;
        cargs[4] = &splits;
        device.Launch(combine, (heads, n, 1), (Math.Min(1024, (hd + 31) / 32 * 32), 1, 1), 0, cargs);
    }
}
