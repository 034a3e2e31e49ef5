using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Engine.Backends.Cpu.Kernels;

/// <summary>
/// The instruction set a SIMD kernel is compiled for, as a type parameter: the JIT specializes a
/// generic kernel per struct type and folds <see cref="Vnni"/> to a constant, so one source serves the
/// AVX2 and AVX-VNNI variants, and tests can run both on a machine that has both.
/// </summary>
public interface IIsa
{
    static abstract bool Vnni { get; }
}

/// <summary>AVX2 + FMA: u8·s8 products through vpmaddubsw/vpmaddwd.</summary>
public readonly struct Avx2Isa : IIsa
{
    public static bool Vnni => false;
}

/// <summary>AVX2 + FMA + AVX-VNNI: u8·s8 products through vpdpbusd, i16·i16 through vpdpwssd.</summary>
public readonly struct VnniIsa : IIsa
{
    public static bool Vnni => true;
}

/// <summary>What this CPU offers the kernels, decided once.</summary>
public static class CpuFeatures
{
    public static readonly bool Avx2Fma = Avx2.IsSupported && Fma.IsSupported;
    public static readonly bool Vnni = Avx2Fma && AvxVnni.IsSupported;

    /// <summary>AVX-512 BW + VBMI + GFNI: the 512-bit 4-bit decode kernels (<see cref="VecDot"/>).</summary>
    public static readonly bool Avx512Gfni = Avx2Fma && Avx512BW.IsSupported && Avx512Vbmi.IsSupported && Gfni.V512.IsSupported;

    public static string Describe() =>
        (Vnni ? "AVX2+FMA+AVX-VNNI" : Avx2Fma ? "AVX2+FMA" : Vector256.IsHardwareAccelerated ? "portable 256-bit (scalar int8)" : "scalar")
        + (Avx512Gfni ? "+AVX-512(BW,VBMI,GFNI)" : Vector512.IsHardwareAccelerated ? "+AVX-512" : "");
}
