using System.CommandLine;
using Engine.Formats.Gguf;

namespace Engine.Cli.Commands;

/// <summary>
/// <c>engine synth-vocab</c>: a byte-level BPE vocabulary grown to a given size from an existing one, as
/// BPE training would grow it: each new token merges two existing pieces of whole characters into a longer
/// word piece (never across a leading space, as the pre-tokenizer keeps words apart), with the merge rule
/// recorded; the share of pieces that are partial characters, quotes or escapes stays the source's. It
/// stands in for the 128k vocabularies of Llama 3 and its peers where a benchmark needs their size and
/// shape (grammar masks walk every token) but no such file is at hand.
/// </summary>
internal static class SynthVocabCommand
{
    public static Command Create(CliOutput io)
    {
        var like = new Option<string>("--like") { Description = "A byte-level BPE GGUF (tokenizer.ggml.model gpt2) to grow", Required = true };
        var size = new Option<int>("--size") { Description = "Tokens in the result", DefaultValueFactory = _ => 128_256 };
        var seed = new Option<int>("--seed") { Description = "Seed of the merges chosen", DefaultValueFactory = _ => 1 };
        var output = new Argument<string>("OUT.gguf") { Description = "File to write" };
        var command = new Command("synth-vocab", "Grow a byte-level BPE vocabulary to a given size (for benchmarks)") { like, size, seed, output };
        command.SetAction(parse => CliErrors.Run(io, parse, () =>
        {
            using var source = GgufFile.Open(parse.GetRequiredValue(like));
            var m = source.Metadata;
            if (m.Find("tokenizer.ggml.model")?.AsString() != "gpt2")
                throw new ArgumentException($"--like {parse.GetRequiredValue(like)}: not a byte-level BPE vocabulary (tokenizer.ggml.model is not gpt2)");
            var tokens = m.GetStringArray("tokenizer.ggml.tokens").ToList();
            int original = tokens.Count;
            int target = parse.GetValue(size);
            if (target < tokens.Count || target > 1 << 20)
                throw new ArgumentException($"--size {target}: must be between the vocabulary's {tokens.Count} tokens and {1 << 20}");
            var kinds = m.Contains("tokenizer.ggml.token_type") ? m.GetInt32Array("tokenizer.ggml.token_type").ToList() : Enumerable.Repeat(1, tokens.Count).ToList();
            var merges = m.GetStringArray("tokenizer.ggml.merges").ToList();
            var known = new HashSet<string>(tokens, StringComparer.Ordinal);
            // pieces to merge: the normal tokens of whole UTF-8 characters (BPE joins a character's bytes before
            // it joins the character to others), earlier (more frequent) ones drawn more often
            var tokenizer = Engine.Tokenizers.TokenizerLoader.FromGguf(m); // from the metadata already read
            var strict = new System.Text.UTF8Encoding(false, throwOnInvalidBytes: true);
            bool Whole(int id)
            {
                try
                {
                    strict.GetCharCount(tokenizer.TokenBytes(id));
                    return true;
                }
                catch (System.Text.DecoderFallbackException)
                {
                    return false;
                }
            }
            // (the first 256 are the single bytes, which training has long merged already)
            var normal = Enumerable.Range(256, tokens.Count - 256).Where(i => kinds[i] == 1 && Whole(i)).ToArray();
            var rng = new Random(parse.GetValue(seed));
            int Draw() => normal[(int)(normal.Length * Math.Pow(rng.NextDouble(), 2))];
            const char Space = 'Ġ'; // byte-level BPE's picture of a leading space
            for (int tries = 0; tokens.Count < target; tries++)
            {
                if (tries > 100 * target)
                    throw new InvalidOperationException($"could not find {target - tokens.Count} more new merges");
                string a = tokens[Draw()], b = tokens[Draw()];
                if (b.Contains(Space) || a.Length + b.Length > 24)
                    continue; // a word piece, not two words
                string merged = a + b;
                if (!known.Add(merged))
                    continue;
                tokens.Add(merged);
                kinds.Add(1);
                merges.Add(a + " " + b);
            }
            var writer = new GgufWriter();
            foreach (string key in m.Keys)
            {
                var value = key switch
                {
                    "tokenizer.ggml.tokens" => GgufValue.FromArray(tokens.ToArray()),
                    "tokenizer.ggml.token_type" => GgufValue.FromArray(kinds.ToArray()),
                    "tokenizer.ggml.merges" => GgufValue.FromArray(merges.ToArray()),
                    "general.name" => GgufValue.From($"{m.GetStringOrNull("general.name") ?? "vocab"} grown to {target}"),
                    _ => m[key],
                };
                writer.Add(key, value);
            }
            string path = parse.GetRequiredValue(output);
            writer.Write(path);
            io.Out.WriteLine($"wrote {path}: {tokens.Count} tokens ({tokens.Count - original} merged), {new FileInfo(path).Length / 1024} KiB");
            return 0;
        }));
        return command;
    }
}
