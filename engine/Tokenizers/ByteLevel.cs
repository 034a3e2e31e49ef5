namespace Engine.Tokenizers;

/// <summary>
/// GPT-2's reversible byte ↔ character map (<c>bytes_to_unicode</c> in OpenAI's encoder.py): printable
/// bytes stand for themselves, the other 68 bytes are shifted to U+0100.. so that every byte has a
/// visible character (a space becomes 'Ġ', a newline 'Ċ'). Byte-level BPE vocabularies are written in
/// these characters.
/// </summary>
internal static class ByteLevel
{
    private static readonly char[] ByteToChar = BuildByteToChar();
    private static readonly Dictionary<char, byte> CharToByte =
        Enumerable.Range(0, 256).ToDictionary(b => ByteToChar[b], b => (byte)b);

    private static char[] BuildByteToChar()
    {
        var map = new char[256];
        int next = 256;
        for (int b = 0; b < 256; b++)
        {
            bool printable = b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;
            map[b] = printable ? (char)b : (char)next++;
        }
        return map;
    }

    /// <summary>The vocabulary string of some bytes (each byte as its character).</summary>
    public static string Encode(ReadOnlySpan<byte> bytes)
    {
        var chars = new char[bytes.Length];
        for (int i = 0; i < bytes.Length; i++)
            chars[i] = ByteToChar[bytes[i]];
        return new string(chars);
    }

    /// <summary>The bytes a vocabulary string stands for, or null if it has a character outside the map.</summary>
    public static byte[]? Decode(string token)
    {
        var bytes = new byte[token.Length];
        for (int i = 0; i < token.Length; i++)
        {
            if (!CharToByte.TryGetValue(token[i], out bytes[i]))
                return null;
        }
        return bytes;
    }
}
