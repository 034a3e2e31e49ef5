using System.Buffers.Binary;
using System.Text;
using Engine.Formats;
using Engine.Formats.Gguf;
using Engine.Quantization;
using Engine.Tensors;

namespace Engine.Tests;

public class GgufTests
{
    private static GgufWriter Sample(int alignment = 32)
    {
        var w = new GgufWriter { Alignment = alignment };
        w.Add("u8", GgufValue.From((byte)200));
        w.Add("i8", GgufValue.From((sbyte)-100));
        w.Add("u16", GgufValue.From((ushort)60000));
        w.Add("i16", GgufValue.From((short)-30000));
        w.Add("u32", GgufValue.From(4_000_000_000u));
        w.Add("i32", GgufValue.From(-2_000_000_000));
        w.Add("u64", GgufValue.From(ulong.MaxValue));
        w.Add("i64", GgufValue.From(long.MinValue));
        w.Add("f32", GgufValue.From(3.25f));
        w.Add("f64", GgufValue.From(-1e300));
        w.Add("bool", GgufValue.From(true));
        w.Add("str", GgufValue.From("héllo 🦙"));
        w.Add("arr.str", GgufValue.FromArray(new[] { "a", "", "ü" }));
        w.Add("arr.f32", GgufValue.FromArray(new[] { 1f, -2.5f }));
        w.Add("arr.i32", GgufValue.FromArray(new[] { 7, -8, 9 }));
        w.Add("arr.u8", GgufValue.FromArray(new byte[] { 1, 2, 3 }));
        w.Add("arr.bool", GgufValue.FromArray(new[] { true, false }));
        w.Add("arr.u64", GgufValue.FromArray(new ulong[] { 5, ulong.MaxValue }));
        w.Add("arr.f64", GgufValue.FromArray(new[] { 0.5 }));
        w.Add("arr.empty", GgufValue.FromArray(Array.Empty<int>()));
        w.AddTensor("a", [3, 2], [1f, 2, 3, 4, 5, 6]);
        w.AddTensor("q", GgmlType.Q8_0, [64], Quantize.Row(GgmlType.Q8_0, Enumerable.Range(0, 64).Select(i => i / 8f).ToArray()));
        w.AddTensor("h", GgmlType.F16, [5], Quantize.Row(GgmlType.F16, [0.5f, 1, 1.5f, 2, -65504]));
        return w;
    }

    [TestCase(32)]
    [TestCase(64)]
    [TestCase(1)]
    public unsafe void Written_files_read_back_exactly(int alignment)
    {
        using var dir = new TempDir();
        Sample(alignment).Write(dir.File("s.gguf"));
        using var f = GgufFile.Open(dir.File("s.gguf"));
        var m = f.Metadata;
        Assert.Multiple(() =>
        {
            Assert.That(f.Version, Is.EqualTo(3));
            Assert.That(f.Alignment, Is.EqualTo(alignment));
            Assert.That(m.Keys.Take(3), Is.EqualTo(new[] { "u8", "i8", "u16" }), "metadata keeps file order");
            Assert.That(m["u8"].RawValue, Is.EqualTo((byte)200));
            Assert.That(m["i8"].RawValue, Is.EqualTo((sbyte)-100));
            Assert.That(m["u16"].RawValue, Is.EqualTo((ushort)60000));
            Assert.That(m["i16"].RawValue, Is.EqualTo((short)-30000));
            Assert.That(m["u32"].AsInt64(), Is.EqualTo(4_000_000_000L));
            Assert.That(m.GetInt32("i32"), Is.EqualTo(-2_000_000_000));
            Assert.That(m["u64"].RawValue, Is.EqualTo(ulong.MaxValue));
            Assert.That(m["i64"].AsInt64(), Is.EqualTo(long.MinValue));
            Assert.That(m.GetSingle("f32"), Is.EqualTo(3.25f));
            Assert.That(m["f64"].AsDouble(), Is.EqualTo(-1e300));
            Assert.That(m.GetBool("bool", false), Is.True);
            Assert.That(m.GetString("str"), Is.EqualTo("héllo 🦙"));
            Assert.That(m.GetStringArray("arr.str"), Is.EqualTo(new[] { "a", "", "ü" }));
            Assert.That(m.GetSingleArray("arr.f32"), Is.EqualTo(new[] { 1f, -2.5f }));
            Assert.That(m.GetInt32Array("arr.i32"), Is.EqualTo(new[] { 7, -8, 9 }));
            Assert.That(m.GetInt32Array("arr.u8"), Is.EqualTo(new[] { 1, 2, 3 }));
            Assert.That(m["arr.bool"].RawValue, Is.EqualTo(new[] { true, false }));
            Assert.That(m["arr.u64"].RawValue, Is.EqualTo(new ulong[] { 5, ulong.MaxValue }));
            Assert.That(m["arr.f64"].RawValue, Is.EqualTo(new[] { 0.5 }));
            Assert.That(m["arr.empty"].ArrayLength, Is.Zero);
        });
        var a = f.FindTensor("a")!;
        Assert.That(a.Dims, Is.EqualTo(new long[] { 3, 2 }));
        Assert.That(new ReadOnlySpan<float>(f.TensorData(a), 6).ToArray(), Is.EqualTo(new[] { 1f, 2, 3, 4, 5, 6 }));
        foreach (var t in f.Tensors)
            Assert.That((f.DataOffset + t.Offset) % alignment, Is.Zero, $"{t.Name} is aligned");
        var q = f.FindTensor("q")!;
        var values = new float[64];
        Dequantize.Row(q.Type, new ReadOnlySpan<byte>(f.TensorData(q), (int)q.ByteSize), values);
        Assert.That(values[63], Is.EqualTo(63 / 8f).Within(63 / 8f / 127), "Q8_0 within half a quantization step");
    }

    [Test]
    public void Version_2_files_are_read()
    {
        using var dir = new TempDir();
        Sample().Write(dir.File("s.gguf"));
        var bytes = File.ReadAllBytes(dir.File("s.gguf"));
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(4), 2);
        File.WriteAllBytes(dir.File("v2.gguf"), bytes);
        using var f = GgufFile.Open(dir.File("v2.gguf"));
        Assert.That(f.Version, Is.EqualTo(2));
        Assert.That(f.Metadata.GetString("str"), Is.EqualTo("héllo 🦙"));
    }

    [Test]
    public void A_failed_write_leaves_the_destination_untouched()
    {
        using var dir = new TempDir();
        string path = dir.File("m.gguf");
        File.WriteAllText(path, "previous content");
        var w = new GgufWriter();
        w.AddTensor("t", GgmlType.F32, [4], 16, _ => throw new IOException("disk full"));
        Assert.Throws<IOException>(() => w.Write(path));
        Assert.That(File.ReadAllText(path), Is.EqualTo("previous content"));
        Assert.That(Directory.GetFiles(dir.Path), Has.Length.EqualTo(1), "no partial file is left behind");
    }

    [Test]
    public void Writer_rejects_data_of_the_wrong_size()
    {
        var w = new GgufWriter();
        Assert.Throws<ArgumentException>(() => w.AddTensor("t", GgmlType.Q4_0, [32], new byte[17]));
        Assert.Throws<ArgumentException>(() => w.AddTensor("t", GgmlType.Q4_0, [31], new byte[18]));
    }
}

/// <summary>
/// Crafted bad GGUF files: each must give a <see cref="ModelFormatException"/> that names the field and
/// the value, and nothing else (no crash, no hang, no allocation sized by the file).
/// </summary>
public class HostileGgufTests
{
    /// <summary>Builds raw GGUF bytes field by field, so any field can lie.</summary>
    private sealed class Raw
    {
        private readonly MemoryStream _s = new();

        public Raw U32(uint v) { Span<byte> b = stackalloc byte[4]; BinaryPrimitives.WriteUInt32LittleEndian(b, v); _s.Write(b); return this; }
        public Raw U64(ulong v) { Span<byte> b = stackalloc byte[8]; BinaryPrimitives.WriteUInt64LittleEndian(b, v); _s.Write(b); return this; }
        public Raw Bytes(params byte[] b) { _s.Write(b); return this; }
        public Raw Str(string s) { var b = Encoding.UTF8.GetBytes(s); U64((ulong)b.Length); _s.Write(b); return this; }
        public Raw Header(ulong tensors, ulong kvs, uint version = 3) => U32(GgufFile.Magic).U32(version).U64(tensors).U64(kvs);
        public Raw KvU32(string key, uint v) => Str(key).U32((uint)GgufValueType.UInt32).U32(v);
        public Raw Tensor(string name, uint type, ulong offset, params ulong[] dims)
        {
            Str(name).U32((uint)dims.Length);
            foreach (ulong d in dims)
                U64(d);
            return U32(type).U64(offset);
        }
        public Raw PadTo(int alignment) { while (_s.Length % alignment != 0) _s.WriteByte(0); return this; }
        public Raw Zeros(int n) { _s.Write(new byte[n]); return this; }
        public byte[] ToArray() => _s.ToArray();
    }

    private static string Open(byte[] bytes)
    {
        using var dir = new TempDir();
        string path = dir.File("bad.gguf");
        File.WriteAllBytes(path, bytes);
        var e = Assert.Throws<ModelFormatException>(() => GgufFile.Open(path).Dispose())!;
        Assert.That(e.Message, Does.StartWith("bad.gguf: "), "the error names the file");
        return e.Message;
    }

    public static IEnumerable<TestCaseData> BadFiles()
    {
        TestCaseData Case(string name, Raw raw, params string[] mentions) => new TestCaseData(raw.ToArray(), mentions).SetName(name);
        yield return Case("bad magic", new Raw().U32(0x46554746).U32(3).U64(0).U64(0), "magic", "0x46554746");
        yield return Case("version 1", new Raw().Header(0, 0, version: 1), "version", "v1");
        yield return Case("version 7", new Raw().Header(0, 0, version: 7), "version", "7");
        yield return Case("tensor count huge", new Raw().Header(1UL << 40, 0), "tensor_count", "1099511627776");
        yield return Case("kv count huge", new Raw().Header(0, ulong.MaxValue), "metadata_kv_count", "18446744073709551615");
        yield return Case("key length huge", new Raw().Header(0, 1).U64(ulong.MaxValue).Zeros(16), "metadata[0].key", "string length");
        yield return Case("string value huge", new Raw().Header(0, 1).Str("k").U32((uint)GgufValueType.String).U64(1UL << 50), "'k'".Trim('\''), "string length 1125899906842624");
        yield return Case("array length huge", new Raw().Header(0, 1).Str("arr").U32((uint)GgufValueType.Array).U32((uint)GgufValueType.UInt64).U64(1UL << 60).Zeros(8), "arr", "1152921504606846976");
        yield return Case("string array length huge", new Raw().Header(0, 1).Str("toks").U32((uint)GgufValueType.Array).U32((uint)GgufValueType.String).U64(uint.MaxValue).Zeros(8), "toks", "4294967295");
        yield return Case("unknown value type", new Raw().Header(0, 1).Str("k").U32(99).U32(0), "k", "99");
        yield return Case("nested array", new Raw().Header(0, 1).Str("k").U32((uint)GgufValueType.Array).U32((uint)GgufValueType.Array).U64(1), "k", "arrays of arrays");
        yield return Case("bool 2", new Raw().Header(0, 1).Str("flag").U32((uint)GgufValueType.Bool).Bytes(2), "flag", "2");
        yield return Case("duplicate key", new Raw().Header(0, 2).KvU32("k", 1).KvU32("k", 2), "k", "twice");
        yield return Case("alignment 0", new Raw().Header(0, 1).KvU32("general.alignment", 0), "general.alignment", "0");
        yield return Case("alignment 48", new Raw().Header(0, 1).KvU32("general.alignment", 48), "general.alignment", "48");
        yield return Case("alignment as string", new Raw().Header(0, 1).Str("general.alignment").U32((uint)GgufValueType.String).Str("32"), "general.alignment", "String");
        yield return Case("zero dims", new Raw().Header(1, 0).Tensor("t", 0, 0), "'t' n_dims", "0");
        yield return Case("five dims", new Raw().Header(1, 0).Tensor("t", 0, 0, 1, 1, 1, 1, 1), "'t' n_dims", "5");
        yield return Case("dims overflow", new Raw().Header(1, 0).Tensor("t", 0, 0, 1UL << 40, 1UL << 40), "'t'", "overflows");
        yield return Case("unknown type", new Raw().Header(1, 0).Tensor("t", 99, 0, 4), "'t' type", "99");
        yield return Case("IQ type", new Raw().Header(1, 0).Tensor("t", (uint)GgmlType.IQ2_XXS, 0, 256), "'t' type", "IQ2_XXS");
        yield return Case("row not whole blocks", new Raw().Header(1, 0).Tensor("t", (uint)GgmlType.Q4_0, 0, 33), "'t'", "33", "32");
        yield return Case("misaligned offset", new Raw().Header(1, 0).Tensor("t", 0, 4, 4).PadTo(32).Zeros(64), "'t' offset", "4");
        yield return Case("data beyond file", new Raw().Header(1, 0).Tensor("t", 0, 0, 1024).PadTo(32).Zeros(16), "'t'", "truncated");
        yield return Case("overlapping tensors", new Raw().Header(2, 0).Tensor("a", 0, 0, 16).Tensor("b", 0, 32, 16).PadTo(32).Zeros(128), "'b'", "overlaps");
        yield return Case("duplicate tensor", new Raw().Header(2, 0).Tensor("a", 0, 0, 4).Tensor("a", 0, 32, 4).PadTo(32).Zeros(64), "'a'", "twice");
    }

    [TestCaseSource(nameof(BadFiles))]
    public void Bad_file_gives_a_clear_error(byte[] bytes, string[] mentions)
    {
        string message = Open(bytes);
        foreach (string m in mentions)
            Assert.That(message, Does.Contain(m));
    }

    [Test]
    public void Empty_file_gives_a_clear_error() => Assert.That(Open([]), Does.Contain("empty"));

    [Test]
    public void Every_truncation_of_a_valid_file_is_a_format_error()
    {
        using var dir = new TempDir();
        var w = new GgufWriter();
        w.Add("general.architecture", "llama");
        w.Add("tokenizer.ggml.tokens", GgufValue.FromArray(new[] { "a", "bb", "ccc" }));
        w.AddTensor("x", [8, 2], new float[16]);
        w.Write(dir.File("ok.gguf"));
        var bytes = File.ReadAllBytes(dir.File("ok.gguf"));
        for (int length = 0; length < bytes.Length; length++)
            Open(bytes[..length]);
    }

    /// <summary>
    /// Seeded random corruption of a small but complete model file. Opening and loading must either work
    /// or fail with <see cref="ModelFormatException"/> — never another exception, a crash or a hang.
    /// </summary>
    public static IEnumerable<TinySpec> FuzzSpecs()
    {
        yield return new TinySpec("fuzz", Vocab: 260, Dim: 32, Heads: 2, KvHeads: 1, Ffn: 32, Layers: 1);
        // the keys and tensors of mixtures of experts, BlockFFN and MLA: counts, widths, ranks, stacked 3-D tensors
        yield return new TinySpec("fuzz-qwen2moe", Arch: "qwen2moe", Vocab: 260, Dim: 32, Heads: 2, KvHeads: 1, Ffn: 32, Layers: 1, QkvBias: true,
            Experts: 4, ExpertsUsed: 2, SharedFfn: 32);
        yield return new TinySpec("fuzz-blockffn-mla", Arch: "blockffn", Vocab: 260, Dim: 32, Heads: 2, KvHeads: 2, HeadDimOverride: 32, QLora: 32,
            KvLora: 32, RopeDim: 16, VDim: 16, Experts: 4, Ffn: 32, Layers: 1);
    }

    [TestCaseSource(nameof(FuzzSpecs))]
    public void Random_corruption_never_escapes_as_anything_but_a_format_error(TinySpec spec)
    {
        using var dir = new TempDir();
        string good = TinyModel.Random(spec).WriteGguf(dir.File("good.gguf"));
        var original = File.ReadAllBytes(good);
        // Corrupt the header region, where the parser's decisions are made; tensor data is just numbers.
        int headerEnd;
        using (var f = GgufFile.Open(good))
            headerEnd = (int)f.DataOffset;
        var rng = new Random(1234);
        string path = dir.File("bad.gguf");
        int rejected = 0;
        for (int iteration = 0; iteration < 1000; iteration++)
        {
            var bytes = (byte[])original.Clone();
            int flips = 1 + rng.Next(4);
            for (int k = 0; k < flips; k++)
            {
                int at = rng.Next(headerEnd);
                bytes[at] = rng.Next(3) switch { 0 => (byte)rng.Next(256), 1 => 0xFF, _ => (byte)(bytes[at] ^ (1 << rng.Next(8))) };
            }
            File.WriteAllBytes(path, bytes);
            try
            {
                using var lm = Api.LanguageModel.Load(path, new Api.ModelOptions { Threads = 1 });
            }
            catch (ModelFormatException)
            {
                rejected++;
            }
        }
        Assert.That(rejected, Is.GreaterThan(300), "most corruptions of the header should be detected");
    }
}
