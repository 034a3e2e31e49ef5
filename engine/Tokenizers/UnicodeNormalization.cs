using System.Text;

namespace Engine.Tokenizers;

/// <summary>
/// Unicode normalization forms NFC, NFD, NFKC and NFKD (Unicode Standard Annex #15), from the tables in
/// <c>UnicodeNormalization.Data.cs</c>: full decomposition (canonical, or compatibility too), Hangul
/// syllables decomposed and composed algorithmically, marks put in canonical order by their combining
/// class, then canonical composition of the unblocked pairs. What HF tokenizer.json normalizers ask for
/// (Qwen2's NFC, NFKC elsewhere); the runtime's own <see cref="string.Normalize()"/> does nothing to
/// non-ASCII text in the invariant-globalization mode this project runs in.
/// </summary>
internal static partial class UnicodeNormalization
{
    private const int SBase = 0xAC00, LBase = 0x1100, VBase = 0x1161, TBase = 0x11A7, LCount = 19, VCount = 21, TCount = 28;
    private const int NCount = VCount * TCount, SCount = LCount * NCount;

    private static readonly Dictionary<int, byte> Ccc = BuildCcc();
    private static readonly Dictionary<int, (bool Compat, int[] Mapping)> Decomposition = BuildDecompositions();
    private static readonly Dictionary<long, int> Composition = BuildCompositions();

    private static Dictionary<int, byte> BuildCcc()
    {
        var table = CombiningClasses;
        var d = new Dictionary<int, byte>(table.Length / 2);
        for (int i = 0; i < table.Length; i += 2)
            d[table[i]] = (byte)table[i + 1];
        return d;
    }

    private static Dictionary<int, (bool, int[])> BuildDecompositions()
    {
        var table = Decompositions;
        var d = new Dictionary<int, (bool, int[])>();
        for (int i = 0; i < table.Length;)
        {
            int cp = table[i], kind = table[i + 1], n = kind & 0xFF;
            d[cp] = (kind >> 8 != 0, table.Slice(i + 2, n).ToArray());
            i += 2 + n;
        }
        return d;
    }

    private static Dictionary<long, int> BuildCompositions()
    {
        var table = Compositions;
        var d = new Dictionary<long, int>(table.Length / 3);
        for (int i = 0; i < table.Length; i += 3)
            d[(long)table[i] << 21 | (uint)table[i + 1]] = table[i + 2];
        return d;
    }

    public static string Nfc(string s) => IsLatin1Only(s, 0x300) ? s : Normalize(s, compat: false, compose: true);

    public static string Nfd(string s) => IsLatin1Only(s, 0xC0) ? s : Normalize(s, compat: false, compose: false);

    public static string Nfkc(string s) => IsLatin1Only(s, 0xA0) ? s : Normalize(s, compat: true, compose: true);

    public static string Nfkd(string s) => IsLatin1Only(s, 0xA0) ? s : Normalize(s, compat: true, compose: false);

    /// <summary>Text whose every character is below <paramref name="limit"/> is already in the form (no decomposition or mark below it).</summary>
    private static bool IsLatin1Only(string s, int limit)
    {
        foreach (char c in s)
        {
            if (c >= limit)
                return false;
        }
        return true;
    }

    private static int CombiningClass(int cp) => Ccc.TryGetValue(cp, out byte k) ? k : 0;

    private static string Normalize(string s, bool compat, bool compose)
    {
        var cps = new List<int>(s.Length + 8);
        for (int i = 0; i < s.Length; i++)
        {
            int cp = s[i];
            if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]))
                cp = char.ConvertToUtf32(s[i], s[++i]);
            Decompose(cp, compat, cps);
        }
        // canonical ordering: a stable sort of each run of marks by combining class
        for (int i = 1; i < cps.Count; i++)
        {
            int k = CombiningClass(cps[i]);
            if (k == 0)
                continue;
            for (int j = i; j > 0 && CombiningClass(cps[j - 1]) > k; j--)
                (cps[j - 1], cps[j]) = (cps[j], cps[j - 1]);
        }
        if (compose)
            Compose(cps);
        var sb = new StringBuilder(cps.Count);
        foreach (int cp in cps)
            sb.Append(char.ConvertFromUtf32(cp));
        return sb.ToString();
    }

    private static void Decompose(int cp, bool compat, List<int> output)
    {
        if (cp >= SBase && cp < SBase + SCount)
        {
            int index = cp - SBase;
            output.Add(LBase + index / NCount);
            output.Add(VBase + index % NCount / TCount);
            if (index % TCount != 0)
                output.Add(TBase + index % TCount);
            return;
        }
        if (Decomposition.TryGetValue(cp, out var d) && (compat || !d.Compat))
        {
            foreach (int part in d.Mapping)
                Decompose(part, compat, output);
            return;
        }
        output.Add(cp);
    }

    /// <summary>Canonical composition: each character joins the last starter unless a mark of its class or higher stands between them.</summary>
    private static void Compose(List<int> cps)
    {
        if (cps.Count == 0)
            return;
        int starter = CombiningClass(cps[0]) == 0 ? 0 : -1;
        int lastClass = starter == 0 ? 0 : 256;
        int write = 1;
        for (int read = 1; read < cps.Count; read++)
        {
            int cp = cps[read];
            int k = CombiningClass(cp);
            bool blocked = starter < 0 || (lastClass != 0 && lastClass >= k) || (lastClass == 0 && write != starter + 1);
            if (!blocked && TryCompose(cps[starter], cp, out int composite))
            {
                cps[starter] = composite;
                continue;
            }
            if (k == 0)
            {
                starter = write;
                lastClass = 0;
            }
            else
                lastClass = k;
            cps[write++] = cp;
        }
        cps.RemoveRange(write, cps.Count - write);
    }

    private static bool TryCompose(int a, int b, out int composite)
    {
        // Hangul: L + V → LV, LV + T → LVT
        if (a >= LBase && a < LBase + LCount && b >= VBase && b < VBase + VCount)
        {
            composite = SBase + ((a - LBase) * VCount + (b - VBase)) * TCount;
            return true;
        }
        if (a >= SBase && a < SBase + SCount && (a - SBase) % TCount == 0 && b > TBase && b < TBase + TCount)
        {
            composite = a + (b - TBase);
            return true;
        }
        return Composition.TryGetValue((long)a << 21 | (uint)b, out composite);
    }
}
