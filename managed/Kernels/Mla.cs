namespace Engine.Cuda.Kernels;

/// <summary>Typed launchers for kernels/mla.cu. CPU reference: <see cref="Backends.Cpu.Kernels.Mla"/>.</summary>
public static class Mla
{
    private const string File = "mla";

    /// <summary>mla_assemble_f32: q, k, v [rows, heads·(nope + rope)] from q raw, the shared k_pe [rows, rope] and kv_b [rows, heads·(nope + vdim)].</summary>
    public static unsafe void Assemble(GpuDevice device, DeviceSpan<float> qRaw, DeviceSpan<float> keyRope, DeviceSpan<float> kvB, int rows, int heads,
        int nope, int rope, int vdim, DeviceSpan<float> q, DeviceSpan<float> k, DeviceSpan<float> v)
    {
        long width = (long)heads * (nope + rope) * rows;
        if (rows <= 0 || qRaw.Length < width || q.Length < width || k.Length < width || v.Length < width || keyRope.Length < (long)rows * rope
            || kvB.Length < (long)rows * heads * (nope + vdim))
            throw new ArgumentException($"mla_assemble_f32: {rows} rows of {heads} heads × ({nope} + {rope}), v {vdim}: buffers too small");
        var fn = device.Function(File, "mla_assemble_f32");
        IntPtr pq = qRaw.Pointer, pk = keyRope.Pointer, pb = kvB.Pointer, oq = q.Pointer, ok = k.Pointer, ov = v.Pointer;
        void** args = stackalloc void*[10];
        args[0] = &pq;
        args[1] = &pk;
        args[2] = &pb;
        args[3] = &heads;
        args[4] = &nope;
        args[5] = &rope;
        args[6] = &vdim;
        args[7] = &oq;
        args[8] = &ok;
        args[9] = &ov;
        device.Launch(fn, (rows, 1, 1), (128, 1, 1), 0, args);
    }

    /// <summary>mla_compact_f32: dst [rows, heads·vdim] = each head's first vdim values of att [rows, heads·width].</summary>
    public static unsafe void Compact(GpuDevice device, DeviceSpan<float> att, int rows, int heads, int width, int vdim, DeviceSpan<float> dst)
    {
        if (rows <= 0 || vdim > width || att.Length < (long)rows * heads * width || dst.Length < (long)rows * heads * vdim)
            throw new ArgumentException($"mla_compact_f32: {rows} rows of {heads} heads, {width} → {vdim}: buffers too small");
        var fn = device.Function(File, "mla_compact_f32");
        IntPtr pa = att.Pointer, pd = dst.Pointer;
        void** args = stackalloc void*[5];
        args[0] = &pa;
        args[1] = &heads;
        args[2] = &width;
        args[3] = &vdim;
        args[4] = &pd;
        device.Launch(fn, (rows, 1, 1), (128, 1, 1), 0, args);
    }
}
