using Engine.Formats;
using Engine.Formats.Gguf;
using Engine.Quantization;
using Engine.Tensors;

namespace Engine.Conversion;

/// <summary>What <see cref="GgufQuantizer.Quantize"/> did to one tensor.</summary>
public sealed record QuantizedTensor(string Name, GgmlType From, GgmlType To, long Bytes);

/// <summary>
/// <c>engine quantize</c>: rewrites a GGUF file with its weight matrices in the types a
/// <see cref="LlamaFileType"/> prescribes (<see cref="QuantizationPlan"/>), as llama-quantize does
/// without an importance matrix. Quantized inputs are dequantized first (requantizing loses more than
/// starting from F16/F32). Norms and biases stay as they are. Metadata is copied, with
/// <c>general.file_type</c> updated.
/// </summary>
public static class GgufQuantizer
{
    /// <param name="progress">Told the tensor bytes written so far and in all, after each tensor.</param>
    public static IReadOnlyList<QuantizedTensor> Quantize(string input, string output, LlamaFileType fileType, int threads = 0, IProgress<(long Done, long Total)>? progress = null)
    {
        if (Path.GetFullPath(input) == Path.GetFullPath(output))
            throw new ArgumentException("the output must be a different file from the input");
        using var source = GgufFile.Open(input);
        var m = source.Metadata;
        string arch = m.GetStringOrNull("general.architecture") ?? "llama";
        int layers = m.Contains($"{arch}.block_count") ? m.GetInt32($"{arch}.block_count") : 0;
        bool hasOutput = source.FindTensor("output.weight") is not null;

        var w = new GgufWriter { Alignment = source.Alignment, Progress = progress };
        foreach (string key in m.Keys)
        {
            if (key != "general.alignment")
                w.Add(key, m[key]);
        }
        w.Add("general.file_type", (uint)fileType);

        var report = new List<QuantizedTensor>();
        var options = new ParallelOptions { MaxDegreeOfParallelism = threads > 0 ? threads : Environment.ProcessorCount };
        foreach (var t in source.Tensors)
        {
            long[] dims = [.. t.Dims];
            var type = QuantizationPlan.IsQuantizable(t.Name, t.Dims) && GgmlTypeInfo.IsWeightType(t.Type)
                ? QuantizationPlan.TypeFor(t.Name, t.Dims, fileType, layers, hasOutput)
                : t.Type;
            int cols = checked((int)dims[0]);
            long rows = t.ElementCount / Math.Max(1, cols);
            long bytes = GgmlTypeInfo.RowBytes(type, cols) * rows;
            report.Add(new QuantizedTensor(t.Name, t.Type, type, bytes));
            var tensor = t;
            if (type == t.Type)
            {
                w.AddTensor(t.Name, type, dims, bytes, stream => CopyRaw(source, tensor, stream));
                continue;
            }
            w.AddTensor(t.Name, type, dims, bytes, stream => Convert(source, tensor, type, cols, rows, stream, options));
        }
        w.Write(output);
        return report;
    }

    private static unsafe void CopyRaw(GgufFile source, GgufTensorInfo t, Stream stream)
    {
        byte* data = source.TensorData(t);
        for (long offset = 0; offset < t.ByteSize; offset += 1 << 24)
            stream.Write(new ReadOnlySpan<byte>(data + offset, (int)Math.Min(1 << 24, t.ByteSize - offset)));
    }

    private static unsafe void Convert(GgufFile source, GgufTensorInfo t, GgmlType to, int cols, long rows, Stream stream, ParallelOptions options)
    {
        long inRowBytes = GgmlTypeInfo.RowBytes(t.Type, cols);
        long outRowBytes = GgmlTypeInfo.RowBytes(to, cols);
        byte* data = source.TensorData(t);
        const int rowsPerBatch = 256;
        var buffer = new byte[outRowBytes * rowsPerBatch];
        for (long first = 0; first < rows; first += rowsPerBatch)
        {
            int count = (int)Math.Min(rowsPerBatch, rows - first);
            Parallel.For(0, count, options, () => new float[cols], (i, _, values) =>
            {
                var row = new ReadOnlySpan<byte>(data + (first + i) * inRowBytes, checked((int)inRowBytes));
                Dequantize.Row(t.Type, row, values);
                Quantization.Quantize.Row(to, values, buffer.AsSpan(checked((int)(i * outRowBytes)), (int)outRowBytes));
                return values;
            }, _ => { });
            stream.Write(buffer, 0, checked((int)(count * outRowBytes)));
        }
    }
}
