using System.Text.Json;
using System.Text.RegularExpressions;
using Engine.Formats;
using Engine.Formats.Gguf;
using Engine.Formats.Safetensors;
using Engine.Tensors;

namespace Engine.Models;

/// <summary>
/// The tensors of a model by their GGUF names (<c>token_embd.weight</c>, <c>blk.3.attn_q.weight</c>, ...),
/// wherever they are stored. Views point into memory-mapped files that stay open until disposal.
/// </summary>
public abstract class WeightSource : IDisposable
{
    /// <summary>The file or folder the weights come from.</summary>
    public abstract string Path { get; }

    /// <summary>All tensors, in storage order.</summary>
    public abstract IReadOnlyList<TensorView> Tensors { get; }

    /// <summary>The tensor of that GGUF name, or null.</summary>
    public abstract TensorView? Find(string name);

    public abstract void Dispose();
}

/// <summary>Tensors of a GGUF file, used in place from its mapping.</summary>
public sealed unsafe class GgufWeightSource : WeightSource
{
    private readonly GgufFile _file;
    private readonly List<TensorView> _tensors;
    private readonly Dictionary<string, TensorView> _byName;

    public GgufWeightSource(GgufFile file)
    {
        _file = file;
        _tensors = file.Tensors.Select(t => new TensorView(t.Name, t.Type, [.. t.Dims], file.TensorData(t), t.ByteSize)).ToList();
        _byName = _tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
    }

    public override string Path => _file.Path;

    public GgufFile File => _file;

    public override IReadOnlyList<TensorView> Tensors => _tensors;

    public override TensorView? Find(string name) => _byName.GetValueOrDefault(name);

    public override void Dispose() => _file.Dispose();
}

/// <summary>
/// Tensors of an HF folder: one <c>model.safetensors</c> or shards listed in
/// <c>model.safetensors.index.json</c>. HF names are mapped to GGUF names and row-major shapes are
/// reversed to ggml order; the bytes themselves are the same layout and are used in place.
/// </summary>
public sealed unsafe partial class SafetensorsWeightSource : WeightSource
{
    private readonly List<SafetensorsFile> _files = [];
    private readonly List<TensorView> _tensors = [];
    private readonly Dictionary<string, TensorView> _byName = new(StringComparer.Ordinal);
    private readonly Dictionary<string, (string Hf, string DType)> _unsupported = new(StringComparer.Ordinal);
    private readonly string _architecture;

    /// <param name="architecture">The config's architecture (GGUF name): a few HF names mean different tensors by family.</param>
    public SafetensorsWeightSource(string folder, string architecture = "llama")
    {
        Path = folder;
        _architecture = architecture;
        try
        {
            foreach (string shard in ShardPaths(folder))
            {
                var file = SafetensorsFile.Open(shard);
                _files.Add(file);
                foreach (var t in file.Tensors.Values.OrderBy(t => t.Offset))
                    AddTensor(file, t);
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public override string Path { get; }

    public override IReadOnlyList<TensorView> Tensors => _tensors;

    public override TensorView? Find(string name)
    {
        if (_byName.TryGetValue(name, out var view))
            return view;
        if (_unsupported.TryGetValue(name, out var u))
            throw new ModelFormatException(Path, $"tensor '{u.Hf}'", $"dtype {u.DType} is not supported for weights (F32, F16, BF16 are)");
        return null;
    }

    private void AddTensor(SafetensorsFile file, SafetensorsTensor t)
    {
        string? name = GgufName(t.Name, _architecture);
        if (name is null)
            return; // not part of the decoder (e.g. rotary_emb.inv_freq buffers)
        if (_byName.ContainsKey(name) || _unsupported.ContainsKey(name))
            throw new ModelFormatException(file.Path, $"tensor '{t.Name}'", "appears in more than one shard");
        if (t.Type is not GgmlType type)
        {
            _unsupported[name] = (t.Name, t.DType);
            return;
        }
        if (t.Shape.Length is 0 or > GgufFile.MaxDims)
            throw new ModelFormatException(file.Path, $"tensor '{t.Name}'", $"{t.Shape.Length} dimensions are not supported for a weight");
        long[] dims = [.. t.Shape.Reverse()];
        var view = new TensorView(name, type, dims, file.Data(t), t.ByteSize);
        if (_architecture is "gemma2" or "gemma3" && name.EndsWith("norm.weight", StringComparison.Ordinal))
            view = PlusOne(view);
        _tensors.Add(view);
        _byName[name] = view;
    }

    /// <summary>
    /// Gemma's RMSNorm multiplies by 1 + w, and HF files store w: the GGUF convention (and this engine's)
    /// is the weight the norm multiplies by, so the loader adds the one in float32 — what llama.cpp's
    /// converter writes. The vectors are small; they live in native memory freed with the source.
    /// </summary>
    private TensorView PlusOne(TensorView norm)
    {
        if (norm.Dims.Count != 1 || norm.ElementCount > 1 << 24)
            throw new ModelFormatException(Path, $"tensor '{norm.Name}'", $"shape {norm.ShapeText} is not a norm weight vector");
        int n = (int)norm.ElementCount;
        var values = new float[n];
        Quantization.Dequantize.Row(norm.Type, new ReadOnlySpan<byte>(norm.Data, checked((int)norm.ByteSize)), values);
        var memory = (float*)System.Runtime.InteropServices.NativeMemory.Alloc((nuint)n, sizeof(float));
        _native.Add((IntPtr)memory);
        for (int i = 0; i < n; i++)
            memory[i] = values[i] + 1f;
        return new TensorView(norm.Name, GgmlType.F32, [n], (byte*)memory, n * sizeof(float));
    }

    private readonly List<IntPtr> _native = [];

    /// <summary>HF Llama/Mistral/Qwen2/Qwen3 parameter names → GGUF names (as llama.cpp's convert_hf_to_gguf maps them).</summary>
    /// <remarks>OLMo 2 and Gemma normalize block outputs: their <c>post_attention_layernorm</c> follows attention (GGUF
    /// <c>attn_post_norm</c>), where Llama's precedes the FFN (<c>ffn_norm</c>).</remarks>
    public static string? GgufName(string hf, string architecture = "llama")
    {
        switch (hf)
        {
            case "model.embed_tokens.weight": return "token_embd.weight";
            case "model.norm.weight": return "output_norm.weight";
            case "lm_head.weight": return "output.weight";
        }
        // BlockFFN's blocks are 3-D parameters without a suffix: up_proj [blocks, size, hidden], down_proj
        // [blocks, hidden, size] — read reversed, exactly the stacked ffn_up_exps / ffn_down_exps
        if (architecture == "blockffn" && BlockName().Match(hf) is { Success: true } block)
            return $"blk.{block.Groups[1].Value}.ffn_{block.Groups[2].Value}_exps.weight";
        var m = LayerName().Match(hf);
        if (!m.Success)
            return null;
        // Experts: Mixtral's block_sparse_moe.experts.E.w1/w3/w2 (gate/up/down), Qwen-MoE's
        // mlp.experts.E.gate_proj/up_proj/down_proj — as blk.N.ffn_gate.E.weight, the names of GGUF's
        // first Mixtral files, one matrix per expert (LlamaWeights reads them or the 3-D ffn_*_exps).
        var expert = ExpertName().Match(m.Groups[2].Value);
        if (expert.Success)
        {
            string kind = expert.Groups[2].Value switch
            {
                "w1" or "gate_proj" => "ffn_gate",
                "w3" or "up_proj" => "ffn_up",
                "w2" or "down_proj" => "ffn_down",
                _ => "",
            };
            return kind.Length == 0 ? null : $"blk.{m.Groups[1].Value}.{kind}.{expert.Groups[1].Value}.{m.Groups[3].Value}";
        }
        string part = m.Groups[2].Value switch
        {
            "input_layernorm" => "attn_norm",
            "self_attn.q_proj" => "attn_q",
            "self_attn.k_proj" => "attn_k",
            "self_attn.v_proj" => "attn_v",
            "self_attn.o_proj" => "attn_output",
            "self_attn.qkv_proj" => "attn_qkv",
            "self_attn.q_norm" => "attn_q_norm",
            "self_attn.k_norm" => "attn_k_norm",
            // after attention in OLMo 2 and Gemma (whose FFN has its own pre_feedforward_layernorm), before the FFN elsewhere
            "post_attention_layernorm" => architecture is "olmo2" or "gemma2" or "gemma3" ? "attn_post_norm" : "ffn_norm",
            "pre_feedforward_layernorm" => "ffn_norm",
            "post_feedforward_layernorm" => "ffn_post_norm",
            "mlp.gate_proj" => "ffn_gate",
            "mlp.up_proj" => "ffn_up",
            "mlp.gate_up_proj" => "ffn_up", // Phi-3: gate then up, in one tensor (as llama.cpp names it)
            "mlp.down_proj" => "ffn_down",
            // the router, and Qwen2-MoE's shared expert with its sigmoid gate
            "block_sparse_moe.gate" or "mlp.gate" => "ffn_gate_inp",
            "mlp.shared_expert.gate_proj" => "ffn_gate_shexp",
            "mlp.shared_expert.up_proj" => "ffn_up_shexp",
            "mlp.shared_expert.down_proj" => "ffn_down_shexp",
            "mlp.shared_expert_gate" => "ffn_gate_inp_shexp",
            // BlockFFN's router, and MLA's projections (llama.cpp's deepseek2 names)
            "mlp.router_proj" => "ffn_gate_inp",
            "mlp.router_norm" => "ffn_router_norm",
            "self_attn.q_a_proj" => "attn_q_a",
            "self_attn.q_a_layernorm" => "attn_q_a_norm",
            "self_attn.q_b_proj" => "attn_q_b",
            "self_attn.kv_a_proj_with_mqa" => "attn_kv_a_mqa",
            "self_attn.kv_a_layernorm" => "attn_kv_a_norm",
            "self_attn.kv_b_proj" => "attn_kv_b",
            _ => "",
        };
        return part.Length == 0 ? null : $"blk.{m.Groups[1].Value}.{part}.{m.Groups[3].Value}";
    }

    [GeneratedRegex(@"^model\.layers\.(\d{1,6})\.(.+)\.(weight|bias)$")]
    private static partial Regex LayerName();

    [GeneratedRegex(@"^model\.layers\.(\d{1,6})\.mlp\.(up|down)_proj$")]
    private static partial Regex BlockName();

    [GeneratedRegex(@"^(?:block_sparse_moe|mlp)\.experts\.(\d{1,5})\.(\w+)$")]
    private static partial Regex ExpertName();

    /// <summary>The shard files of a folder, validated: names from the index must be plain file names inside it.</summary>
    private static List<string> ShardPaths(string folder)
    {
        string index = System.IO.Path.Combine(folder, "model.safetensors.index.json");
        if (File.Exists(index))
        {
            using var doc = HfJson.Parse(index);
            var map = HfJson.Object(index, doc.RootElement, "weight_map");
            var shards = new SortedSet<string>(StringComparer.Ordinal);
            foreach (var entry in map.EnumerateObject())
            {
                string? shard = entry.Value.ValueKind == JsonValueKind.String ? entry.Value.GetString() : null;
                if (string.IsNullOrEmpty(shard) || shard != System.IO.Path.GetFileName(shard) || shard is "." or "..")
                    throw new ModelFormatException(index, $"weight_map['{entry.Name}']", $"'{entry.Value.GetRawText()}' is not a file name in the model folder");
                shards.Add(shard);
            }
            var paths = shards.Select(s => System.IO.Path.Combine(folder, s)).ToList();
            foreach (string p in paths)
            {
                if (!File.Exists(p))
                    throw new ModelFormatException(index, "weight_map", $"shard '{System.IO.Path.GetFileName(p)}' is listed but missing from the folder");
            }
            return paths;
        }
        string single = System.IO.Path.Combine(folder, "model.safetensors");
        if (File.Exists(single))
            return [single];
        var found = Directory.GetFiles(folder, "*.safetensors").Order(StringComparer.Ordinal).ToList();
        return found.Count > 0 ? found : throw new ModelFormatException(folder, "weights", "no model.safetensors, index or *.safetensors file in the folder");
    }

    public override void Dispose()
    {
        foreach (var f in _files)
            f.Dispose();
        _files.Clear();
        foreach (var p in _native)
            System.Runtime.InteropServices.NativeMemory.Free((void*)p);
        _native.Clear();
    }
}
