using Engine.Backends;
using Engine.Backends.Cpu;
using Engine.Tensors;

namespace Engine.Tests;

/// <summary>
/// Batch invariance of the CPU backend's attention: a prompt's rows, computed together (two causal rows
/// at a time by <c>Attention.HeadPair</c> where it applies) or as sequences of a continuous batch, get
/// bit for bit what each row gets when decoded alone after the rows before it — what exact speculative
/// verification and prefix reuse rely on.
/// </summary>
public class CpuAttentionTests
{
    // heads, kvHeads, headDim, blockSize, prefix, n, softCap, f16
    [TestCase(4, 2, 64, 32, 0, 37, 0f, false, TestName = "causal prompt of 37 rows, GQA, 64-wide heads")]
    [TestCase(2, 2, 128, 32, 45, 20, 0f, false, TestName = "20 rows after 45 cached, 128-wide heads")]
    [TestCase(2, 1, 64, 16, 10, 33, 0f, false, TestName = "blocks of 16 (per-slot scores)")]
    [TestCase(2, 2, 64, 32, 3, 29, 30f, false, TestName = "soft-capped scores")]
    [TestCase(4, 2, 64, 32, 50, 23, 0f, true, TestName = "an F16 cache")]
    [TestCase(2, 2, 48, 32, 0, 9, 0f, false, TestName = "48-wide heads (no paired kernel)")]
    public void Causal_rows_together_get_what_each_gets_alone(int heads, int kvHeads, int headDim, int blockSize, int prefix, int n, float softCap, bool f16)
    {
        var layout = new KvLayout(Layers: 2, KvHeads: kvHeads, HeadDim: headDim, BlockSize: blockSize);
        int layer = 1, tokens = prefix + n, blocks = (tokens + blockSize - 1) / blockSize;
        var rng = new Random(heads * 100 + n);
        var table = Enumerable.Range(0, 2 * blocks).OrderBy(_ => rng.Next()).Take(blocks).ToArray();
        int cols = kvHeads * headDim, qCols = heads * headDim;
        var k = Enumerable.Range(0, tokens * cols).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray();
        var v = Enumerable.Range(0, tokens * cols).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray();
        var q = Enumerable.Range(0, n * qCols).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        float scale = 1 / MathF.Sqrt(headDim);

        using var cpu = new CpuBackend(2, kvCacheType: f16 ? GgmlType.F16 : GgmlType.F32);
        using var store = CpuKvFixture.Filled(cpu, layout, 2 * blocks, layer, table, k, v);
        using var qb = CpuKvFixture.Upload(cpu, q);
        using var together = cpu.Allocate(q.Length);
        cpu.Attention(new Activation(qb, n, qCols), store, layer, table, prefix, AttentionMask.Causal, heads, scale, new Activation(together, n, qCols), softCap: softCap);

        // the same rows as a continuous batch: 3 rows alone after the prefix, then the rest as a second sequence
        using var batched = cpu.Allocate(q.Length);
        var batch = new SequenceBatch();
        batch.Add(Math.Min(3, n), prefix, table);
        if (n > 3)
            batch.Add(n - 3, prefix + 3, table);
        cpu.AttentionBatch(new Activation(qb, n, qCols), store, layer, batch, heads, scale, new Activation(batched, n, qCols), softCap: softCap);

        using var one = cpu.Allocate(qCols);
        using var alone = cpu.Allocate(qCols);
        for (int r = 0; r < n; r++)
        {
            Array.Copy(q, r * qCols, ((CpuBuffer)one).Data, 0, qCols);
            cpu.Attention(new Activation(one, 1, qCols), store, layer, table, prefix + r, AttentionMask.Causal, heads, scale, new Activation(alone, 1, qCols), softCap: softCap);
            for (int i = 0; i < qCols; i++)
            {
                float expected = ((CpuBuffer)alone).Data[i], actual = ((CpuBuffer)together).Data[r * qCols + i];
                Assert.That(BitConverter.SingleToInt32Bits(actual), Is.EqualTo(BitConverter.SingleToInt32Bits(expected)),
                    $"row {r}, head {i / headDim}, dim {i % headDim}: {actual} together, {expected} alone");
                float inBatch = ((CpuBuffer)batched).Data[r * qCols + i];
                Assert.That(BitConverter.SingleToInt32Bits(inBatch), Is.EqualTo(BitConverter.SingleToInt32Bits(expected)),
                    $"row {r}, head {i / headDim}, dim {i % headDim}: {inBatch} in a continuous batch, {expected} alone");
            }
        }
    }
}
