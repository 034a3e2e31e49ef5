using Engine.Backends;
using Engine.Backends.Cpu;

namespace Engine.Tests;

/// <summary>The attention tests' common set-up on the CPU backend: a KV store filled through StoreKv, and activations from arrays.</summary>
internal static class CpuKvFixture
{
    /// <summary>A store of <paramref name="blocks"/> blocks holding rows of k and v (kvHeads × headDim each) at slots 0.. of the table.</summary>
    public static KvStore Filled(CpuBackend cpu, KvLayout layout, int blocks, int layer, int[] table, float[] k, float[] v)
    {
        var store = cpu.CreateKvStore(layout, blocks);
        for (int b = 0; b < blocks; b++)
            store.EnsureBlock(b);
        int cols = layout.KvHeads * layout.HeadDim, tokens = k.Length / cols;
        using var kb = Upload(cpu, k);
        using var vb = Upload(cpu, v);
        cpu.StoreKv(store, layer, table, 0, new Activation(kb, tokens, cols), new Activation(vb, tokens, cols));
        return store;
    }

    /// <summary>A buffer holding <paramref name="values"/>.</summary>
    public static DeviceBuffer Upload(CpuBackend cpu, float[] values)
    {
        var buffer = cpu.Allocate(values.Length);
        values.CopyTo(((CpuBuffer)buffer).Data, 0);
        return buffer;
    }
}
