using System.Runtime.InteropServices;
using Engine.Backends;
using Engine.Backends.Cpu;
using Engine.Tensors;

namespace Engine.Tests;

/// <summary>
/// A batch of 8 to 15 rows (or 8 to 15 past its whole pairs of 8-row groups) on quantized weights
/// goes through the native matrix kernels (direct, or on decoded rows) with its last group padded by
/// zero rows, where the output buffer has room for the padded rows. The matrix kernels compute each activation row in its
/// own lanes, so a row's result is bit for bit what it gets inside a full 16-row batch; where the output
/// has no room, the row kernels run as before (bit for bit the batch-invariant result).
/// </summary>
public unsafe class CpuPaddedGroupsTests
{
    // weights: 40 rows (whole 8-row blocks for the direct kernel) and 37 (5 rows left to the decoded path)
    [TestCase(GgmlType.Q8_0, 40, 9)]
    [TestCase(GgmlType.Q8_0, 37, 12)]
    [TestCase(GgmlType.Q4_0, 40, 15)]
    [TestCase(GgmlType.Q4_0, 37, 29)] // a pair, then 13 rows padded to the next
    [TestCase(GgmlType.Q4_K, 40, 12)]
    [TestCase(GgmlType.Q4_K, 37, 9)]
    [TestCase(GgmlType.Q6_K, 40, 12)] // decoded rows and the native codes kernels
    [TestCase(GgmlType.Q6_K, 37, 15)]
    [TestCase(GgmlType.Q5_1, 40, 9)]
    public void Padded_groups_give_each_row_its_full_batch_result(GgmlType type, int weightRows, int n)
    {
        NativeKernelTests.RequireNative();
        const int cols = 512;
        int full = (n + 15) / 16 * 16;
        var rng = new Random(weightRows * 100 + n);
        long rowBytes = GgmlTypeInfo.RowBytes(type, cols);
        var w = NativeKernelTests.RandomRows(type, cols, weightRows, rng);
        try
        {
            var x = Enumerable.Range(0, full * cols).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
            using var cpu = new CpuBackend(2);
            var matrix = cpu.LoadMatrix(new TensorView("w", type, [cols, weightRows], w, rowBytes * weightRows));

            float[] Product(int rows, int outputRows, bool invariant)
            {
                using var xb = CpuKvFixture.Upload(cpu, x[..(rows * cols)]);
                using var yb = cpu.Allocate(outputRows * weightRows);
                cpu.MatMul(new Activation(xb, rows, cols), matrix, new Activation(yb, rows, weightRows), invariant);
                return ((CpuBuffer)yb).Data[..(rows * weightRows)];
            }

            var batch = Product(full, full, invariant: false); // whole pairs of groups: no padding
            var padded = Product(n, full, invariant: false);   // room for the padded rows
            var tight = Product(n, n, invariant: false);       // no room: as before padding existed
            var alone = Product(n, n, invariant: true);        // each row as it is computed alone
            // below two groups, types with 4-row kernels ran every row on the row kernels before padding
            // existed, and still do where the output has no room (the others run whole groups, then rows)
            bool rowKernels = n < 16 && Engine.Backends.Cpu.Kernels.VecDot.HasRows4(type);
            for (int i = 0; i < n * weightRows; i++)
            {
                string where = $"row {i / weightRows}, output {i % weightRows}";
                Assert.That(BitConverter.SingleToInt32Bits(padded[i]), Is.EqualTo(BitConverter.SingleToInt32Bits(batch[i])), $"padded vs full batch: {where}");
                if (rowKernels)
                    Assert.That(BitConverter.SingleToInt32Bits(tight[i]), Is.EqualTo(BitConverter.SingleToInt32Bits(alone[i])), $"no room vs alone: {where}");
            }
            Assert.That(padded, Is.Not.EqualTo(alone), "the padded batch really ran the matrix kernels (their order of operations differs from the row kernels')");
        }
        finally
        {
            NativeMemory.Free(w);
        }
    }
}
