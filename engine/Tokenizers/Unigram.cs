using System.Text;

namespace Engine.Tokenizers;

/// <summary>
/// The Unigram language-model tokenizer (Kudo, "Subword Regularization", 2018) of T5-style SentencePiece
/// vocabularies (GGUF <c>t5</c>), as llama.cpp's <c>llm_tokenizer_ugm</c> runs it: the text is normalized
/// through the vocabulary's precompiled character map (<see cref="PrecompiledCharsMap"/>), spaces are
/// escaped as U+2581 (one in front, runs merged where the vocabulary says), and the Viterbi path of
/// highest total score over the vocabulary's pieces is chosen — user-defined pieces score 0, a character
/// no piece covers becomes the unknown token at the lowest score less 10, and runs of unknowns merge.
/// Works on UTF-8 bytes, as llama.cpp and SentencePiece do.
/// </summary>
internal sealed class UnigramEncoder : IFragmentEncoder
{
    private const float UnknownPenalty = 10f;
    private readonly ByteTrie _pieces = new();
    private readonly ByteTrie _userDefined = new();
    private readonly float[] _scores;
    private readonly bool[] _isUserDefined;
    private readonly int _unknown;
    private readonly double _unknownScore;
    private readonly PrecompiledCharsMap? _charsMap;
    private readonly bool _addSpacePrefix, _removeExtraWhitespaces;

    public UnigramEncoder(string[] tokens, float[] scores, TokenKind[] kinds, int unknown, PrecompiledCharsMap? charsMap, bool addSpacePrefix,
        bool removeExtraWhitespaces)
    {
        _scores = scores;
        _unknown = unknown;
        _charsMap = charsMap;
        _addSpacePrefix = addSpacePrefix;
        _removeExtraWhitespaces = removeExtraWhitespaces;
        _isUserDefined = kinds.Select(k => k == TokenKind.UserDefined).ToArray();
        float min = float.MaxValue;
        for (int i = 0; i < tokens.Length; i++)
        {
            if (kinds[i] == TokenKind.Normal)
                min = Math.Min(min, scores[i]);
            if (kinds[i] is TokenKind.Normal or TokenKind.UserDefined or TokenKind.Unused)
                _pieces.Add(Encoding.UTF8.GetBytes(tokens[i]), i);
            if (kinds[i] == TokenKind.UserDefined)
                _userDefined.Add(Encoding.UTF8.GetBytes(tokens[i]), i);
        }
        _unknownScore = (min == float.MaxValue ? 0 : min) - UnknownPenalty;
    }

    public void Encode(string fragment, bool afterSpecial, bool atStart, List<int> output)
    {
        byte[] text = Normalize(Encoding.UTF8.GetBytes(fragment));
        int n = text.Length;
        if (n == 0)
            return;
        var best = new (int Token, int Start, double Score)[n + 1];
        Array.Fill(best, (_unknown, 0, double.MinValue));
        best[0] = (_unknown, 0, 0);
        for (int start = 0; start < n;)
        {
            int charLength = Math.Min(Utf8Length(text[start]), n - start);
            bool singleCharacterFound = false;
            double here = best[start].Score;
            int node = 0;
            for (int end = start; end < n; end++)
            {
                node = _pieces.Next(node, text[end]);
                if (node < 0)
                    break;
                if (_pieces.Value(node) is int id)
                {
                    if (end + 1 - start == charLength)
                        singleCharacterFound = true;
                    double score = here + (_isUserDefined[id] ? 0.0 : _scores[id]);
                    if (score > best[end + 1].Score)
                        best[end + 1] = (id, start, score);
                }
            }
            if (!singleCharacterFound)
            {
                double score = here + _unknownScore;
                if (score > best[start + charLength].Score)
                    best[start + charLength] = (_unknown, start, score);
            }
            start += charLength;
        }
        int first = output.Count;
        bool previousUnknown = false;
        for (int at = n; ;)
        {
            var (token, from, _) = best[at];
            bool unknown = token == _unknown;
            if (!(previousUnknown && unknown))
                output.Add(token);
            if (from == 0)
                break;
            previousUnknown = unknown;
            at = from;
        }
        output.Reverse(first, output.Count - first);
    }

    /// <summary>
    /// The charsmap's replacements (user-defined pieces kept as they are), spaces escaped as U+2581: one in
    /// front of the text when the vocabulary adds a prefix, every run merged into one when it removes
    /// extra whitespace (llama.cpp's <c>llm_tokenizer_ugm_session::normalize</c>).
    /// </summary>
    private byte[] Normalize(byte[] input)
    {
        var result = new List<byte>(input.Length * 3 / 2 + 3);
        ReadOnlySpan<byte> space = "\u2581"u8;
        bool prepended = false, inWord = false;
        for (int offset = 0; offset < input.Length;)
        {
            var (replacement, consumed) = NormalizePrefix(input, offset);
            foreach (byte c in replacement.Span)
            {
                if (c != (byte)' ')
                {
                    if (!inWord)
                    {
                        inWord = true;
                        if ((_addSpacePrefix && !prepended) || _removeExtraWhitespaces)
                        {
                            result.AddRange(space);
                            prepended = true;
                        }
                    }
                    result.Add(c);
                }
                else
                {
                    inWord = false;
                    if (!_removeExtraWhitespaces)
                        result.AddRange(space);
                }
            }
            offset += consumed;
        }
        return [.. result];
    }

    private (ReadOnlyMemory<byte> Replacement, int Consumed) NormalizePrefix(byte[] input, int offset)
    {
        int userDefined = _userDefined.LongestPrefix(input, offset);
        if (userDefined > 0)
            return (input.AsMemory(offset, userDefined), userDefined);
        if (_charsMap?.LongestMatch(input, offset) is var (replacement, length) && length > 0)
            return (replacement, length);
        int n = Utf8Length(input[offset]);
        if (offset + n <= input.Length && System.Text.Unicode.Utf8.IsValid(input.AsSpan(offset, n)))
            return (input.AsMemory(offset, n), n);
        return ("\uFFFD"u8.ToArray(), 1); // an invalid byte: the replacement character
    }

    /// <summary>The length of the UTF-8 sequence a lead byte starts (1 for a stray continuation byte), as llama.cpp's unicode_len_utf8.</summary>
    private static int Utf8Length(byte lead) => lead < 0x80 ? 1 : lead < 0xC0 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;

    /// <summary>A byte trie of the vocabulary's pieces (children in one dictionary keyed by node and byte).</summary>
    private sealed class ByteTrie
    {
        private readonly Dictionary<long, int> _children = [];
        private readonly List<int> _values = [-1];

        public void Add(byte[] key, int value)
        {
            int node = 0;
            foreach (byte b in key)
            {
                long edge = (long)node << 8 | b;
                if (!_children.TryGetValue(edge, out int child))
                {
                    child = _values.Count;
                    _values.Add(-1);
                    _children[edge] = child;
                }
                node = child;
            }
            if (key.Length > 0 && _values[node] < 0)
                _values[node] = value;
        }

        public int Next(int node, byte b) => _children.TryGetValue((long)node << 8 | b, out int child) ? child : -1;

        public int? Value(int node) => _values[node] >= 0 ? _values[node] : null;

        /// <summary>Bytes of the longest key that starts <paramref name="text"/> at <paramref name="offset"/>, 0 for none.</summary>
        public int LongestPrefix(byte[] text, int offset)
        {
            int node = 0, longest = 0;
            for (int i = offset; i < text.Length; i++)
            {
                node = Next(node, text[i]);
                if (node < 0)
                    break;
                if (_values[node] >= 0)
                    longest = i + 1 - offset;
            }
            return longest;
        }
    }
}

/// <summary>
/// SentencePiece's precompiled normalization map (the <c>precompiled_charsmap</c> of a T5 vocabulary):
/// a 32-bit length, an XOR-compressed compact double array over UTF-8 bytes (Kanda, "Space- and
/// Time-Efficient String Dictionaries", 2018) whose leaves point at replacement strings, then the
/// NUL-terminated replacements. <see cref="LongestMatch"/> finds the longest input prefix it maps.
/// Every index read from the file is bounds-checked.
/// </summary>
internal sealed class PrecompiledCharsMap
{
    private readonly uint[] _units;
    private readonly byte[] _replacements;

    public PrecompiledCharsMap(byte[] blob, string file, string field)
    {
        if (blob.Length < 4)
            throw new Formats.ModelFormatException(file, field, $"{blob.Length} bytes are too short for a precompiled charsmap");
        uint size = BitConverter.ToUInt32(blob, 0);
        if (size % 4 != 0 || (long)size + 4 >= blob.Length)
            throw new Formats.ModelFormatException(file, field, $"its double array of {size} bytes does not fit the {blob.Length}-byte charsmap");
        _units = new uint[size / 4];
        Buffer.BlockCopy(blob, 4, _units, 0, (int)size);
        _replacements = blob[(4 + (int)size)..];
    }

    private uint Unit(uint index) => index < _units.Length ? _units[index]
        : throw new InvalidDataException($"the precompiled charsmap's double array has no entry {index} (it has {_units.Length})");

    private uint Base(uint index)
    {
        uint u = Unit(index);
        return (u >> 10) << (int)((u & (1U << 9)) >> 6);
    }

    /// <summary>The replacement of the longest prefix of <paramref name="input"/> from <paramref name="offset"/> the map knows, or (empty, 0).</summary>
    public (ReadOnlyMemory<byte> Replacement, int Length) LongestMatch(byte[] input, int offset)
    {
        int length = 0;
        uint replacementOffset = 0;
        uint node = Base(0);
        for (int i = offset; i < input.Length; i++)
        {
            byte c = input[i];
            if (c == 0)
                break;
            node ^= c;
            if (node >= _units.Length)
                break; // no such child (a map built for all 256 first bytes never gets here)
            uint unit = Unit(node);
            if ((unit & ((1U << 31) | 0xFF)) != c)
                break;
            bool leaf = ((unit >> 8) & 1) != 0;
            node ^= Base(node);
            if (leaf)
            {
                length = i - offset + 1;
                replacementOffset = Unit(node) & ((1U << 31) - 1);
            }
        }
        if (length == 0)
            return (ReadOnlyMemory<byte>.Empty, 0);
        if (replacementOffset >= _replacements.Length)
            throw new InvalidDataException($"the precompiled charsmap points past its replacements ({replacementOffset} of {_replacements.Length} bytes)");
        int end = Array.IndexOf(_replacements, (byte)0, (int)replacementOffset);
        if (end < 0)
            end = _replacements.Length;
        return (_replacements.AsMemory((int)replacementOffset, end - (int)replacementOffset), length);
    }
}
