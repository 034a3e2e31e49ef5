using System.Globalization;

namespace Engine.Formats.Gguf;

/// <summary>Metadata value types as GGUF numbers them (<c>enum gguf_type</c>).</summary>
public enum GgufValueType : uint
{
    UInt8 = 0,
    Int8 = 1,
    UInt16 = 2,
    Int16 = 3,
    UInt32 = 4,
    Int32 = 5,
    Float32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    UInt64 = 10,
    Int64 = 11,
    Float64 = 12,
}

/// <summary>
/// One GGUF metadata value: a scalar, a string, or an array of one scalar type or of strings.
/// Arrays are held as typed .NET arrays (<c>uint[]</c>, <c>float[]</c>, <c>string[]</c>, ...).
/// Accessors convert between integer widths when the value fits, and throw
/// <see cref="InvalidCastException"/> otherwise; <see cref="GgufMetadata"/> turns that into a
/// <see cref="ModelFormatException"/> naming the key.
/// </summary>
public sealed class GgufValue
{
    private readonly object _value;

    private GgufValue(GgufValueType type, GgufValueType elementType, object value)
    {
        Type = type;
        ElementType = elementType;
        _value = value;
    }

    public GgufValueType Type { get; }

    /// <summary>The element type when <see cref="Type"/> is <see cref="GgufValueType.Array"/>.</summary>
    public GgufValueType ElementType { get; }

    /// <summary>The raw .NET value: a boxed scalar, a string, or a typed array.</summary>
    public object RawValue => _value;

    public bool IsArray => Type == GgufValueType.Array;

    public int ArrayLength => _value is Array a ? a.Length : throw new InvalidCastException($"{Type} is not an array");

    public static GgufValue From(byte v) => new(GgufValueType.UInt8, default, v);
    public static GgufValue From(sbyte v) => new(GgufValueType.Int8, default, v);
    public static GgufValue From(ushort v) => new(GgufValueType.UInt16, default, v);
    public static GgufValue From(short v) => new(GgufValueType.Int16, default, v);
    public static GgufValue From(uint v) => new(GgufValueType.UInt32, default, v);
    public static GgufValue From(int v) => new(GgufValueType.Int32, default, v);
    public static GgufValue From(ulong v) => new(GgufValueType.UInt64, default, v);
    public static GgufValue From(long v) => new(GgufValueType.Int64, default, v);
    public static GgufValue From(float v) => new(GgufValueType.Float32, default, v);
    public static GgufValue From(double v) => new(GgufValueType.Float64, default, v);
    public static GgufValue From(bool v) => new(GgufValueType.Bool, default, v);
    public static GgufValue From(string v) => new(GgufValueType.String, default, v);

    public static GgufValue FromArray(byte[] v) => new(GgufValueType.Array, GgufValueType.UInt8, v);
    public static GgufValue FromArray(sbyte[] v) => new(GgufValueType.Array, GgufValueType.Int8, v);
    public static GgufValue FromArray(ushort[] v) => new(GgufValueType.Array, GgufValueType.UInt16, v);
    public static GgufValue FromArray(short[] v) => new(GgufValueType.Array, GgufValueType.Int16, v);
    public static GgufValue FromArray(uint[] v) => new(GgufValueType.Array, GgufValueType.UInt32, v);
    public static GgufValue FromArray(int[] v) => new(GgufValueType.Array, GgufValueType.Int32, v);
    public static GgufValue FromArray(ulong[] v) => new(GgufValueType.Array, GgufValueType.UInt64, v);
    public static GgufValue FromArray(long[] v) => new(GgufValueType.Array, GgufValueType.Int64, v);
    public static GgufValue FromArray(float[] v) => new(GgufValueType.Array, GgufValueType.Float32, v);
    public static GgufValue FromArray(double[] v) => new(GgufValueType.Array, GgufValueType.Float64, v);
    public static GgufValue FromArray(bool[] v) => new(GgufValueType.Array, GgufValueType.Bool, v);
    public static GgufValue FromArray(string[] v) => new(GgufValueType.Array, GgufValueType.String, v);

    /// <summary>The value as a string; only a <see cref="GgufValueType.String"/> converts.</summary>
    public string AsString() => _value as string ?? throw Mismatch("a string");

    public bool AsBool() => _value is bool b ? b : throw Mismatch("a bool");

    /// <summary>Any integer type, widened to 64 bits (an unsigned value above long.MaxValue does not fit).</summary>
    public long AsInt64() => _value switch
    {
        byte v => v,
        sbyte v => v,
        ushort v => v,
        short v => v,
        uint v => v,
        int v => v,
        long v => v,
        ulong v when v <= long.MaxValue => (long)v,
        _ => throw Mismatch("an integer"),
    };

    /// <summary>An integer that fits in 32 bits.</summary>
    public int AsInt32()
    {
        long v = AsInt64();
        return v is >= int.MinValue and <= int.MaxValue ? (int)v : throw new InvalidCastException($"{v} does not fit in 32 bits");
    }

    /// <summary>A float or an integer, as double.</summary>
    public double AsDouble() => _value switch
    {
        float v => v,
        double v => v,
        _ when Type is not (GgufValueType.String or GgufValueType.Bool or GgufValueType.Array) => AsInt64(),
        _ => throw Mismatch("a number"),
    };

    public float AsSingle() => (float)AsDouble();

    public string[] AsStringArray() => _value as string[] ?? throw Mismatch("an array of strings");

    /// <summary>An array of any float or integer element type, converted to <c>float</c>.</summary>
    public float[] AsSingleArray() => _value switch
    {
        float[] f => f,
        Array a when ElementType is not (GgufValueType.String or GgufValueType.Bool) =>
            Enumerable.Range(0, a.Length).Select(i => Convert.ToSingle(a.GetValue(i), CultureInfo.InvariantCulture)).ToArray(),
        _ => throw Mismatch("an array of numbers"),
    };

    /// <summary>An array of any integer element type whose values fit in 32 bits.</summary>
    public int[] AsInt32Array() => _value switch
    {
        int[] i => i,
        Array a when ElementType is not (GgufValueType.String or GgufValueType.Bool or GgufValueType.Float32 or GgufValueType.Float64) =>
            Enumerable.Range(0, a.Length).Select(i => checked(Convert.ToInt32(a.GetValue(i), CultureInfo.InvariantCulture))).ToArray(),
        _ => throw Mismatch("an array of integers"),
    };

    /// <summary>An array of bytes (uint8 or int8 elements, as a precompiled charsmap is stored).</summary>
    public byte[] AsByteArray() => _value switch
    {
        byte[] b => b,
        sbyte[] sb => (byte[])(Array)sb,
        _ => throw Mismatch("an array of bytes"),
    };

    /// <summary>A short human-readable rendering (long arrays are summarized).</summary>
    public override string ToString()
    {
        if (_value is Array a)
        {
            const int shown = 8;
            var items = Enumerable.Range(0, Math.Min(a.Length, shown)).Select(i => Format(a.GetValue(i)));
            string more = a.Length > shown ? $", ... ({a.Length} items)" : "";
            return $"[{string.Join(", ", items)}{more}]";
        }
        return Format(_value);
    }

    private static string Format(object? v) => v switch
    {
        string s => "\"" + (s.Length > 80 ? s[..80] + "..." : s).Replace("\n", "\\n", StringComparison.Ordinal) + "\"",
        float f => f.ToString("R", CultureInfo.InvariantCulture),
        double d => d.ToString("R", CultureInfo.InvariantCulture),
        bool b => b ? "true" : "false",
        IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
        _ => v?.ToString() ?? "null",
    };

    private InvalidCastException Mismatch(string wanted)
    {
        string actual = IsArray ? $"an array of {ElementType}" : Type.ToString();
        return new InvalidCastException($"expected {wanted}, found {actual}");
    }
}
