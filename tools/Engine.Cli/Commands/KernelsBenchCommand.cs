using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Engine.Backends;
using Engine.Backends.Cpu.Kernels;
using Engine.Cuda;
using Engine.Tensors;
using K = Engine.Cuda.Kernels;

namespace Engine.Cli.Commands;

/// <summary>
/// <c>engine kernels-bench</c>: each CUDA kernel on the layer shapes of TinyLlama-1.1B and Llama-3-8B —
/// time per call (CUDA events around a batch of back-to-back launches after a warm-up, median of
/// several batches) and the bandwidth or FLOP/s achieved against the device's peak, which is queried
/// (memory clock × bus width; SMs × clock) — and against the copy bandwidth measured in the same run.
/// Every kernel's result is checked against its CPU reference before it is timed.
/// </summary>
internal static class KernelsBenchCommand
{
    /// <summary>A model's layer shape.</summary>
    private sealed record Shape(string Name, int Dim, int Ffn, int Heads, int KvHeads, int Vocab)
    {
        public int HeadDim => Dim / Heads;
    }

    private static readonly Shape[] Shapes =
    [
        new("tinyllama-1.1b", 2048, 5632, 32, 4, 32000),
        new("llama-3-8b", 4096, 14336, 32, 8, 128256),
    ];

    private sealed record Result(string Kernel, string Shape, double Microseconds, double Bytes, double Flops, bool Valid, string Check);

    public static Command Create(CliOutput io)
    {
        var kernel = new Option<string?>("--kernel") { Description = "Only kernels whose name contains this (gemv, gemv_q4_0, attention, ...)" };
        var json = new Option<bool>("--json") { Description = "One JSON object per line" };
        var device = new Option<string>("--device") { Description = "cuda or cuda:N", DefaultValueFactory = _ => "cuda" };
        var batches = new Option<int>("--repetitions", "-r") { Description = "Timed batches per kernel (median reported)", DefaultValueFactory = _ => 9 };
        var command = new Command("kernels-bench", "Time each CUDA kernel on real layer shapes against the device's peak") { kernel, json, device, batches };
        command.SetAction(parse => CliErrors.Run(io, parse, () =>
        {
            string d = parse.GetRequiredValue(device);
            int index = d == "cuda" ? 0 : d.StartsWith("cuda:", StringComparison.Ordinal) && int.TryParse(d.AsSpan(5), out int i) ? i
                : throw new ArgumentException($"--device {d}: kernels-bench runs on cuda or cuda:N");
            int reps = parse.GetValue(batches);
            if (reps < 1)
                throw new ArgumentException($"--repetitions {reps} must be at least 1");
            using var gpu = GpuDevice.Open(index);
            var bench = new Bench(gpu, reps, parse.GetValue(kernel));
            double peakBandwidth = gpu.PeakBandwidth, peakFlops = gpu.PeakFlops;
            double copyBandwidth = bench.CopyBandwidth();
            bool asJson = parse.GetValue(json);
            if (asJson)
            {
                io.Out.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object>
                {
                    ["device"] = gpu.Info.ToString(),
                    ["peak_bandwidth_gbs"] = peakBandwidth / 1e9,
                    ["copy_bandwidth_gbs"] = copyBandwidth / 1e9,
                    ["peak_fp32_tflops"] = peakFlops / 1e12,
                }));
            }
            else
            {
                io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{gpu.Info}: peak memory bandwidth {peakBandwidth / 1e9:F0} GB/s (attributes), device-to-device copy {copyBandwidth / 1e9:F0} GB/s (measured), peak FP32 {peakFlops / 1e12:F1} TFLOP/s"));
                io.Out.WriteLine("| kernel | shape | µs/call | GB/s | % peak BW | % copy BW | GFLOP/s | checked |");
                io.Out.WriteLine("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |");
            }
            int failures = 0;
            foreach (var shape in Shapes)
            {
                foreach (var r in bench.Run(shape))
                {
                    double seconds = r.Microseconds * 1e-6;
                    double gbs = r.Bytes / seconds / 1e9, gflops = r.Flops / seconds / 1e9;
                    failures += r.Valid ? 0 : 1;
                    if (asJson)
                    {
                        io.Out.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object>
                        {
                            ["kernel"] = r.Kernel,
                            ["shape"] = r.Shape,
                            ["us_per_call"] = r.Microseconds,
                            ["gbs"] = gbs,
                            ["pct_peak_bandwidth"] = 100 * r.Bytes / seconds / peakBandwidth,
                            ["pct_copy_bandwidth"] = 100 * r.Bytes / seconds / copyBandwidth,
                            ["gflops"] = gflops,
                            ["pct_peak_flops"] = 100 * r.Flops / seconds / peakFlops,
                            ["valid"] = r.Valid,
                            ["check"] = r.Check,
                        }));
                    }
                    else
                    {
                        io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                            $"| {r.Kernel} | {r.Shape} | {r.Microseconds:F2} | {gbs:F0} | {100 * r.Bytes / seconds / peakBandwidth:F0}% | {100 * r.Bytes / seconds / copyBandwidth:F0}% | {gflops:F0} | {(r.Valid ? (r.Check.Length > 0 ? "ok " + r.Check : "ok") : "FAILED: " + r.Check)} |"));
                    }
                }
            }
            if (failures > 0)
                io.Error.WriteLine($"engine: {failures} kernel(s) disagreed with their CPU reference");
            return failures > 0 ? CliErrors.Failure : 0;
        }));
        return command;
    }

    /// <summary>Runs and times the kernels of one shape.</summary>
    private sealed class Bench(GpuDevice gpu, int reps, string? filter)
    {
        private const int CallsPerBatch = 20;
        private const double U = 1.0 / (1 << 24);

        private bool Wanted(string kernel) => filter is null || kernel.Contains(filter, StringComparison.OrdinalIgnoreCase);

        /// <summary>Median over <c>reps</c> batches of the time per call of <paramref name="launch"/>, in µs.</summary>
        private double Time(Action launch)
        {
            using var timer = new GpuTimer(gpu);
            for (int w = 0; w < 3; w++)
                launch();
            var times = new double[reps];
            for (int r = 0; r < reps; r++)
            {
                timer.Start();
                for (int c = 0; c < CallsPerBatch; c++)
                    launch();
                times[r] = timer.Stop() * 1000.0 / CallsPerBatch;
            }
            Array.Sort(times);
            return times[reps / 2];
        }

        /// <summary>Device-to-device copy bandwidth (bytes read + written per second) of a 1 GiB buffer.</summary>
        public double CopyBandwidth()
        {
            long bytes = gpu.IsEmulator ? 1L << 24 : 1L << 30; // the emulator's copies are host memcpys
            using var a = gpu.Allocate<byte>(bytes);
            using var b = gpu.Allocate<byte>(bytes);
            double us = Time(() => gpu.CopyDeviceToDevice(b.Span.Pointer, a.Span.Pointer, bytes));
            return 2.0 * bytes / (us * 1e-6);
        }

        private static float[] Floats(Random rng, long n, double scale = 1)
        {
            var x = new float[n];
            for (long i = 0; i < n; i++)
                x[i] = (float)((rng.NextDouble() * 2 - 1) * scale);
            return x;
        }

        public IEnumerable<Result> Run(Shape s)
        {
            var rng = new Random(1);
            // decode GEMVs: q/o [dim, dim], k/v [kvDim, dim], gate/up [ffn, dim], down [dim, ffn], LM head [vocab, dim]
            (string Name, int Rows, int Cols)[] matrices =
            [
                ("attn_q", s.Dim, s.Dim), ("attn_kv", s.KvHeads * s.HeadDim, s.Dim), ("ffn_up", s.Ffn, s.Dim), ("ffn_down", s.Dim, s.Ffn),
                ("output", s.Vocab, s.Dim),
            ];
            foreach (var type in K.WeightFormats.Supported)
            {
                string name = "gemv_" + K.WeightFormats.Suffix(type);
                if (!Wanted(name))
                    continue;
                foreach (var (matrix, rows, cols) in matrices)
                {
                    if (type is GgmlType.F32 or GgmlType.BF16 && matrix != "ffn_up")
                        continue; // F32 and BF16 on one shape: the quantized and F16 types are the ones that matter
                    yield return Gemv(s, type, name, matrix, rows, cols, 1, rng);
                }
                yield return Gemv(s, type, name + "_x8", "ffn_up×4", s.Ffn, s.Dim, 4, rng);
                if (type is not (GgmlType.F32 or GgmlType.BF16))
                {
                    foreach (var fused in FusedGemv(s, type, rng))
                        yield return fused;
                }
            }
            if (Wanted("rms_norm_f32"))
                yield return Elementwise(s, "rms_norm_f32", 1, s.Dim, rng);
            if (Wanted("rope_f32"))
                yield return Rope(s, rng);
            if (Wanted("swiglu_f32"))
                yield return Elementwise(s, "swiglu_f32", 1, s.Ffn, rng);
            if (Wanted("add_f32"))
                yield return Elementwise(s, "add_f32", 1, s.Dim, rng);
            if (Wanted("argmax_f32"))
                yield return Elementwise(s, "argmax_f32", 1, s.Vocab, rng);
            if (Wanted("get_rows_q4_0"))
                yield return GetRowsQ4(s, rng);
            if (Wanted("dequantize_q4_0_f16"))
                yield return DequantizeQ4(s, rng);
            foreach (int context in new[] { 512, 4096 })
            {
                if (Wanted("attention_f32"))
                {
                    yield return Attention(s, context, rng);
                    if (context >= 4096)
                        yield return Attention(s, context, rng, window: 512); // a sliding-window layer: the splits follow the window
                }
            }
            if (Wanted("attention_prefill_f32"))
                yield return PrefillAttention(s, 512, rng);
            foreach (int n in new[] { 512, 4096 })
            {
                // Not on the emulator: its tensor-core stand-in multiplies whole tiles in every thread (hours at
                // these sizes); the GPU suite checks the kernel there on small cases.
                if (Wanted("attention_prefill_tc_f16") && !gpu.IsEmulator && K.Attention.UsesTensorCores(gpu, true, n, s.HeadDim, batchInvariant: false))
                    yield return TensorCorePrefill(s, n, rng);
            }
            foreach (int nodes in new[] { 1, 8, 16, 64 })
            {
                if (Wanted("tree_attention_f32"))
                    yield return TreeAttention(s, 512, nodes, f16: false, rng);
            }
            foreach (int nodes in new[] { 1, 64 })
            {
                if (Wanted("tree_attention_f16"))
                    yield return TreeAttention(s, 512, nodes, f16: true, rng);
            }
            foreach (int rows in new[] { 1, 8, 64 })
            {
                if (Wanted("sample_f32"))
                    yield return Sample(s, rows, new Sampling.FusedSamplingParameters(0.8f, 40, 0.95f, 0.05f), rng);
            }
            foreach (int rows in new[] { 1, 64 })
            {
                if (Wanted("sample_f32"))
                    yield return Sample(s, rows, new Sampling.FusedSamplingParameters(0.8f, 0, 0.95f, 0), rng); // top-p alone: the whole row searched
            }
            if (Wanted("top_k_ids_f32"))
                yield return TopKIds(s, 16, rng);
            if (Wanted("accept_greedy"))
                yield return AcceptGreedy(s, 64, rng);
            if (Wanted("accept_sampled"))
                yield return AcceptSampled(s, 16, rng);
            if (Wanted("store_kv_f32"))
                yield return StoreKv(s, rng);
            if (Wanted("rope_store_kv_f16"))
                yield return RopeStoreKv(s, rng);
            if (Wanted("cublas_gemm_f16") && CuBlas.TryCreate(gpu) is { } blas)
            {
                using (blas)
                    yield return Gemm(s, blas, rng);
            }
        }

        private Result Gemv(Shape s, GgmlType type, string kernel, string matrix, int rows, int cols, int ncols, Random rng)
        {
            long rowBytes = GgmlTypeInfo.RowBytes(type, cols);
            var wBytes = Weights(type, rows, cols, rng);
            var x = Floats(rng, (long)ncols * cols);
            using var w = gpu.Upload<byte>(wBytes);
            using var dx = gpu.Upload<float>(x);
            using var y = gpu.Allocate<float>((long)ncols * rows);
            K.Gemv.Run(gpu, type, w, rows, cols, dx, ncols, y);
            var actual = gpu.Download<float>(y);
            // Check the first 64 rows against the reference, with the summation-order bound of the parity tests.
            int checkedRows = Math.Min(64, rows);
            var expected = new float[ncols * checkedRows];
            var row = new float[cols];
            string problem = "";
            for (int r = 0; r < checkedRows && problem.Length == 0; r++)
            {
                Quantization.Dequantize.Row(type, wBytes.AsSpan((int)(r * rowBytes), (int)rowBytes), row);
                for (int c = 0; c < ncols; c++)
                {
                    double sum = 0, magnitude = 0;
                    for (int k = 0; k < cols; k++)
                    {
                        sum += (double)row[k] * x[c * cols + k];
                        magnitude += Math.Abs((double)row[k] * x[c * cols + k]);
                    }
                    if (Math.Abs(actual[(long)c * rows + r] - sum) > (2.0 * cols + 4) * U * magnitude)
                        problem = $"row {r}: {actual[(long)c * rows + r]} vs {sum}";
                }
            }
            double us = Time(() => K.Gemv.Run(gpu, type, w, rows, cols, dx, ncols, y));
            double bytes = rowBytes * rows + 4.0 * ncols * (cols + rows);
            return new Result(kernel, $"{s.Name} {matrix} [{rows}×{cols}]{(ncols > 1 ? $" ×{ncols}" : "")}", us, bytes, 2.0 * rows * cols * ncols,
                problem.Length == 0, problem);
        }

        /// <summary>
        /// The fused decode kernels of a layer against the separate launches they replace, on the same
        /// data: q/k/v in one launch, gate/up with SwiGLU, and the down projection with the residual add
        /// and the next RMSNorm. Each row checks the fused result equals the separate one bit for bit, and
        /// its time is the fused launch's (the separate launches' time is in the check column).
        /// </summary>
        private IEnumerable<Result> FusedGemv(Shape s, GgmlType type, Random rng)
        {
            int kv = s.KvHeads * s.HeadDim;
            string t = K.WeightFormats.Suffix(type);
            using var wq = gpu.Upload<byte>(Weights(type, s.Dim, s.Dim, rng));
            using var wk = gpu.Upload<byte>(Weights(type, kv, s.Dim, rng));
            using var wv = gpu.Upload<byte>(Weights(type, kv, s.Dim, rng));
            using var x = gpu.Upload<float>(Floats(rng, s.Ffn));
            using var a = gpu.Allocate<float>(s.Dim + 2 * kv);
            using var b = gpu.Allocate<float>(s.Dim + 2 * kv);
            DeviceSpan<float> A(long at, long n) => a.Span.Slice(at, n);
            DeviceSpan<float> B(long at, long n) => b.Span.Slice(at, n);
            void Qkv() => K.Gemv.Run(gpu, type, s.Dim, [new(wq, s.Dim, A(0, s.Dim)), new(wk, kv, A(s.Dim, kv)), new(wv, kv, A(s.Dim + kv, kv))], x.Span.Slice(0, s.Dim), 1);
            void Separate()
            {
                K.Gemv.Run(gpu, type, wq, s.Dim, s.Dim, x.Span.Slice(0, s.Dim), 1, B(0, s.Dim));
                K.Gemv.Run(gpu, type, wk, kv, s.Dim, x.Span.Slice(0, s.Dim), 1, B(s.Dim, kv));
                K.Gemv.Run(gpu, type, wv, kv, s.Dim, x.Span.Slice(0, s.Dim), 1, B(s.Dim + kv, kv));
            }
            yield return Compare($"gemv_{t}", $"{s.Name} attn_qkv one launch [{s.Dim}+2×{kv}×{s.Dim}]", Qkv, Separate, a, b,
                (long)GgmlTypeInfo.RowBytes(type, s.Dim) * (s.Dim + 2 * kv), 2.0 * (s.Dim + 2 * kv) * s.Dim);

            using var wg = gpu.Upload<byte>(Weights(type, s.Ffn, s.Dim, rng));
            using var wu = gpu.Upload<byte>(Weights(type, s.Ffn, s.Dim, rng));
            using var g = gpu.Allocate<float>(s.Ffn);
            using var g2 = gpu.Allocate<float>(s.Ffn);
            using var u2 = gpu.Allocate<float>(s.Ffn);
            yield return Compare($"gemv_{t}_glu", $"{s.Name} ffn_gate+up+SwiGLU [2×{s.Ffn}×{s.Dim}]",
                () => K.Gemv.Glu(gpu, type, wg, wu, s.Ffn, s.Dim, x.Span.Slice(0, s.Dim), 1, g),
                () =>
                {
                    K.Gemv.Run(gpu, type, wg, s.Ffn, s.Dim, x.Span.Slice(0, s.Dim), 1, g2);
                    K.Gemv.Run(gpu, type, wu, s.Ffn, s.Dim, x.Span.Slice(0, s.Dim), 1, u2);
                    K.SwiGlu.SwiGluF32(gpu, g2, u2, g2, s.Ffn);
                }, g, g2, 2L * GgmlTypeInfo.RowBytes(type, s.Dim) * s.Ffn, 4.0 * s.Ffn * s.Dim);

            using var wd = gpu.Upload<byte>(Weights(type, s.Dim, s.Ffn, rng));
            var residual = Floats(rng, s.Dim, 4);
            using var normW = gpu.Upload<float>(Floats(rng, s.Dim, 1));
            using var r1 = gpu.Upload<float>(residual);
            using var r2 = gpu.Upload<float>(residual);
            using var h1 = gpu.Allocate<float>(s.Dim);
            using var h2 = gpu.Allocate<float>(s.Dim);
            using var proj = gpu.Allocate<float>(s.Dim);
            using var counter = gpu.Allocate<uint>(1);
            gpu.Clear(counter.Span.Pointer, counter.Span.Bytes);
            // Repeated launches keep adding into the residual; both sides add alike, so they stay equal.
            yield return Compare($"gemv_{t}", $"{s.Name} ffn_down+add+rms_norm [{s.Dim}×{s.Ffn}]",
                () => K.Gemv.Run(gpu, type, s.Ffn, [new(wd, s.Dim, r1)], x, 1, accumulate: true, norm: new K.GemvNorm(normW, 1e-5f, h1, counter)),
                () =>
                {
                    K.Gemv.Run(gpu, type, wd, s.Dim, s.Ffn, x, 1, proj);
                    K.Add.AddF32(gpu, r2, proj, s.Dim);
                    K.RmsNorm.RmsNormF32(gpu, r2, normW, h2, 1, s.Dim, 1e-5f);
                }, h1, h2, (long)GgmlTypeInfo.RowBytes(type, s.Ffn) * s.Dim, 2.0 * s.Dim * s.Ffn);
        }

        /// <summary>Times a fused launch and the separate launches it replaces; valid when their outputs are equal bit for bit.</summary>
        private Result Compare(string kernel, string shape, Action fused, Action separate, GpuArray<float> fusedOut, GpuArray<float> separateOut,
            double bytes, double flops)
        {
            fused();
            separate();
            var f = gpu.Download<float>(fusedOut);
            var p = gpu.Download<float>(separateOut);
            int bad = Enumerable.Range(0, f.Length).FirstOrDefault(i => BitConverter.SingleToInt32Bits(f[i]) != BitConverter.SingleToInt32Bits(p[i]), -1);
            double us = Time(fused);
            double separateUs = Time(separate);
            string check = bad < 0 ? $"= separate launches ({separateUs:0.0} µs)" : $"element {bad}: fused {f[bad]:R}, separate {p[bad]:R}";
            return new Result(kernel, shape, us, bytes, flops, bad < 0, check);
        }

        private static byte[] Weights(GgmlType type, int rows, int cols, Random rng)
        {
            // Real quantized values of random floats: scales and mins as a quantizer makes them.
            long rowBytes = GgmlTypeInfo.RowBytes(type, cols);
            var data = new byte[rowBytes * rows];
            var row = new float[cols];
            var one = new byte[rowBytes];
            for (int r = 0; r < Math.Min(rows, 256); r++)
            {
                for (int k = 0; k < cols; k++)
                    row[k] = (float)(rng.NextDouble() * 2 - 1);
                Quantization.Quantize.Row(type, row, one);
                one.CopyTo(data, r * rowBytes);
            }
            for (int r = 256; r < rows; r++) // quantizing every row of an 8B head takes minutes on the host: repeat the first 256
                Array.Copy(data, (r % 256) * rowBytes, data, r * rowBytes, rowBytes);
            return data;
        }

        private Result Elementwise(Shape s, string kernel, int rows, int cols, Random rng)
        {
            var x = Floats(rng, (long)rows * cols, 4);
            var w = Floats(rng, cols, 1);
            using var dx = gpu.Upload<float>(x);
            using var dw = gpu.Upload<float>(w);
            using var dy = gpu.Allocate<float>((long)rows * cols);
            using var di = gpu.Allocate<int>(rows);
            var expected = new float[rows * cols];
            Action launch;
            double bytes;
            Func<bool> check;
            switch (kernel)
            {
                case "rms_norm_f32":
                    launch = () => K.RmsNorm.RmsNormF32(gpu, dx, dw, dy, rows, cols, 1e-5f);
                    Backends.Cpu.Kernels.RmsNorm.RmsNormF32(x, w, 1e-5f, expected, rows);
                    bytes = 4.0 * (2 * rows * cols + cols);
                    check = () => Close(gpu.Download<float>(dy), expected, 1e-5);
                    break;
                case "swiglu_f32":
                    launch = () => K.SwiGlu.SwiGluF32(gpu, dx, dx, dy, (long)rows * cols);
                    Activations.SwiGluF32(x, x, expected);
                    bytes = 4.0 * 3 * rows * cols;
                    check = () => Close(gpu.Download<float>(dy), expected, 1e-5);
                    break;
                case "add_f32":
                    launch = () => K.Add.AddF32(gpu, dy, dx, (long)rows * cols);
                    bytes = 4.0 * 3 * rows * cols;
                    check = () =>
                    {
                        gpu.Clear(dy.Span.Pointer, dy.Span.Bytes);
                        K.Add.AddF32(gpu, dy, dx, (long)rows * cols);
                        return Close(gpu.Download<float>(dy), x, 0);
                    };
                    break;
                default: // argmax_f32
                    launch = () => K.ArgMax.ArgMaxF32(gpu, dx, rows, cols, di);
                    bytes = 4.0 * rows * cols;
                    check = () => gpu.Download<int>(di)[0] == Activations.ArgMaxF32(x);
                    break;
            }
            launch();
            bool valid = check();
            double us = Time(launch);
            return new Result(kernel, $"{s.Name} [{rows}×{cols}]", us, bytes, 0, valid, valid ? "" : "differs from the CPU reference");
        }

        private static bool Close(float[] actual, float[] expected, double relative)
        {
            double scale = expected.Max(MathF.Abs);
            for (int i = 0; i < expected.Length; i++)
            {
                if (Math.Abs(actual[i] - expected[i]) > relative * scale)
                    return false;
            }
            return true;
        }

        private Result Rope(Shape s, Random rng)
        {
            int pairs = s.HeadDim / 2;
            var x = Floats(rng, (long)s.Heads * s.HeadDim);
            var invFreq = Enumerable.Range(0, pairs).Select(i => Math.Pow(10000.0, -2.0 * i / s.HeadDim)).ToArray();
            using var dx = gpu.Upload<float>(x);
            using var dp = gpu.Upload<int>([1000]);
            using var df = gpu.Upload<double>(invFreq);
            K.Rope.RopeF32(gpu, dx, 1, s.Heads, s.HeadDim, dp, df, pairs, neox: false);
            var expected = (float[])x.Clone();
            Backends.Cpu.Kernels.Rope.RopeF32(expected, s.Heads, s.HeadDim, false, invFreq.Select(f => (float)Math.Cos(1000 * f)).ToArray(),
                invFreq.Select(f => (float)Math.Sin(1000 * f)).ToArray());
            bool valid = Close(gpu.Download<float>(dx), expected, 1e-6);
            double us = Time(() => K.Rope.RopeF32(gpu, dx, 1, s.Heads, s.HeadDim, dp, df, pairs, neox: false));
            return new Result("rope_f32", $"{s.Name} q [{s.Heads}×{s.HeadDim}]", us, 8.0 * s.Heads * s.HeadDim, 0, valid, valid ? "" : "differs from the CPU reference");
        }

        /// <summary>rope_store_kv_f16 (one decoding token: RoPE on q and k, k and v into an F16 cache) against rope_f32 twice and store_kv_f16.</summary>
        private Result RopeStoreKv(Shape s, Random rng)
        {
            int pairs = s.HeadDim / 2, kv = s.KvHeads * s.HeadDim;
            var layout = new KvLayout(Layers: 1, KvHeads: s.KvHeads, HeadDim: s.HeadDim, BlockSize: 32);
            var invFreq = Enumerable.Range(0, pairs).Select(i => Math.Pow(10000.0, -2.0 * i / s.HeadDim)).ToArray();
            var q = Floats(rng, (long)s.Heads * s.HeadDim);
            var k = Floats(rng, kv);
            var v = Floats(rng, kv);
            using var dp = gpu.Upload<int>([40]);
            using var df = gpu.Upload<double>(invFreq);
            using var dt = gpu.Upload<int>([2, 3]);
            using var q1 = gpu.Upload<float>(q);
            using var k1 = gpu.Upload<float>(k);
            using var q2 = gpu.Upload<float>(q);
            using var k2 = gpu.Upload<float>(k);
            using var dv = gpu.Upload<float>(v);
            using var c1 = gpu.Allocate<Half>(4 * KvCacheKernels.BlockFloats(layout));
            using var c2 = gpu.Allocate<Half>(4 * KvCacheKernels.BlockFloats(layout));
            gpu.Clear(c1.Span.Pointer, c1.Span.Bytes);
            gpu.Clear(c2.Span.Pointer, c2.Span.Bytes);
            void Fused() => K.RopeKv.RopeStoreKv(gpu, q1, k1, dv, 1, s.Heads, dp, df, pairs, false, dt, 2, 40, c1.Span, 4, layout, 0);
            void Separate()
            {
                K.Rope.RopeF32(gpu, q2, 1, s.Heads, s.HeadDim, dp, df, pairs, neox: false);
                K.Rope.RopeF32(gpu, k2, 1, s.KvHeads, s.HeadDim, dp, df, pairs, neox: false);
                K.KvCache.StoreKv(gpu, k2, dv, 1, dt, 2, 40, c2.Span, 4, layout, 0);
            }
            Fused();
            Separate();
            bool valid = gpu.Download<Half>(c1).AsSpan().SequenceEqual(gpu.Download<Half>(c2)) && gpu.Download<float>(q1).AsSpan().SequenceEqual(gpu.Download<float>(q2));
            double us = Time(Fused);
            double separateUs = Time(Separate);
            return new Result("rope_store_kv_f16", $"{s.Name} one token", us, 4.0 * (2 * s.Heads * s.HeadDim + 3 * kv) + 4.0 * kv, 0, valid,
                valid ? $"= separate launches ({separateUs:0.0} µs)" : "differs from rope_f32 + store_kv_f16");
        }

        private Result GetRowsQ4(Shape s, Random rng)
        {
            var table = Weights(GgmlType.Q4_0, 512, s.Dim, rng);
            using var dt = gpu.Upload<byte>(table);
            using var ids = gpu.Upload<int>([7]);
            using var dy = gpu.Allocate<float>(s.Dim);
            K.GetRows.Rows(gpu, GgmlType.Q4_0, dt, 512, s.Dim, ids, 1, dy);
            var expected = new float[s.Dim];
            GetRows.GetRowsQ4_0(table, s.Dim, [7], expected);
            bool valid = Close(gpu.Download<float>(dy), expected, 1e-6);
            double us = Time(() => K.GetRows.Rows(gpu, GgmlType.Q4_0, dt, 512, s.Dim, ids, 1, dy));
            return new Result("get_rows_q4_0", $"{s.Name} token_embd row [{s.Dim}]", us, GgmlTypeInfo.RowBytes(GgmlType.Q4_0, s.Dim) + 4.0 * s.Dim, 0,
                valid, valid ? "" : "differs from the CPU reference");
        }

        private Result DequantizeQ4(Shape s, Random rng)
        {
            var w = Weights(GgmlType.Q4_0, s.Ffn, s.Dim, rng);
            using var dw = gpu.Upload<byte>(w);
            using var dh = gpu.Allocate<Half>((long)s.Ffn * s.Dim);
            K.Dequantize.ToF16(gpu, GgmlType.Q4_0, dw, s.Ffn, s.Dim, dh);
            var expected = new Half[64 * s.Dim];
            DequantizeF16.DequantizeQ4_0F16(w.AsSpan(0, (int)GgmlTypeInfo.RowBytes(GgmlType.Q4_0, s.Dim) * 64), 64, s.Dim, expected);
            var actual = gpu.Download<Half>(dh.Span.Slice(0, 64L * s.Dim));
            bool valid = actual.AsSpan().SequenceEqual(expected);
            double us = Time(() => K.Dequantize.ToF16(gpu, GgmlType.Q4_0, dw, s.Ffn, s.Dim, dh));
            return new Result("dequantize_q4_0_f16", $"{s.Name} ffn_up [{s.Ffn}×{s.Dim}]", us, w.Length + 2.0 * s.Ffn * s.Dim, 0, valid,
                valid ? "" : "differs from the CPU reference");
        }

        /// <summary>A one-layer cache of <paramref name="keys"/> random keys and values in blocks 0, 1, ... and <paramref name="rows"/> random queries.</summary>
        private static (KvLayout Layout, int Blocks, int[] Table, float[] Cache, float[] Q, float Scale) AttentionInputs(Shape s, int keys, int rows, Random rng)
        {
            var layout = new KvLayout(Layers: 1, KvHeads: s.KvHeads, HeadDim: s.HeadDim, BlockSize: 32);
            int blocks = keys / layout.BlockSize;
            var cache = Floats(rng, blocks * KvCacheKernels.BlockFloats(layout));
            var q = Floats(rng, (long)rows * s.Heads * s.HeadDim, 1 / Math.Sqrt(s.HeadDim));
            return (layout, blocks, Enumerable.Range(0, blocks).ToArray(), cache, q, 1 / MathF.Sqrt(s.HeadDim));
        }

        /// <param name="window">0, or a sliding window of that many keys (the row sees the last ones only).</param>
        private Result Attention(Shape s, int context, Random rng, int window = 0)
        {
            var (layout, blocks, table, cache, q, scale) = AttentionInputs(s, context, 1, rng);
            using var dc = gpu.Upload<float>(cache);
            using var dt = gpu.Upload<int>(table);
            using var dq = gpu.Upload<float>(q);
            using var scratch = gpu.Allocate<float>(KvCacheKernels.ScratchFloats(s.Heads, 1, s.HeadDim, context));
            using var dy = gpu.Allocate<float>((long)s.Heads * s.HeadDim);
            int prefix = context - 1;
            int[] starts = window > 0 ? [context - window] : [];
            using var ds = gpu.Upload<int>(window > 0 ? starts : [0]);
            var windowStarts = window > 0 ? ds.Span : default;
            int keys = window > 0 ? window : context;
            void Launch() => K.Attention.AttentionF32(gpu, dq, 1, s.Heads, dc.Span, blocks, layout, 0, dt, blocks, prefix, default, 0, scale, scratch, dy,
                windowStarts: windowStarts, maxRanks: keys);
            Launch();
            var expected = new float[s.Heads * s.HeadDim];
            KvCacheKernels.AttentionF32(q, 1, s.Heads, cache, layout, 0, table, prefix, AttentionMask.Causal, scale, expected, windowStarts: starts);
            bool valid = Close(gpu.Download<float>(dy), expected, 1e-4);
            double us = Time(Launch);
            double bytes = 2.0 * 4 * keys * s.KvHeads * s.HeadDim; // K and V of every kv head read once
            return new Result("attention_f32", $"{s.Name} decode, context {context}{(window > 0 ? $", window {window}" : "")}", us, bytes,
                4.0 * s.Heads * s.HeadDim * keys, valid, valid ? "" : "differs from the CPU reference");
        }

        private Result PrefillAttention(Shape s, int n, Random rng)
        {
            var (layout, blocks, table, cache, q, scale) = AttentionInputs(s, n, n, rng);
            using var dc = gpu.Upload<float>(cache);
            using var dt = gpu.Upload<int>(table);
            using var dq = gpu.Upload<float>(q);
            using var dy = gpu.Allocate<float>((long)n * s.Heads * s.HeadDim);
            void Launch() => K.Attention.AttentionF32(gpu, dq, n, s.Heads, dc.Span, blocks, layout, 0, dt, blocks, 0, default, 0, scale, default, dy);
            Launch();
            var actual = gpu.Download<float>(dy);
            // Check the first 16 rows (one block of the kernel) against the reference on those rows.
            int rows = 16;
            var expected = new float[rows * s.Heads * s.HeadDim];
            KvCacheKernels.AttentionPrefillF32(q.AsSpan(0, expected.Length), rows, s.Heads, cache, layout, 0, table, 0, AttentionMask.Causal, scale, expected);
            bool valid = Close(actual.AsSpan(0, expected.Length).ToArray(), expected, 1e-4);
            double us = Time(Launch);
            double bytes = 4.0 * n * (2 * s.Heads * s.HeadDim + 2 * s.KvHeads * s.HeadDim);
            return new Result("attention_prefill_f32", $"{s.Name} causal prefill of {n}", us, bytes, 2.0 * s.Heads * s.HeadDim * (double)n * n, valid,
                valid ? "" : "differs from the CPU reference");
        }

        /// <summary>
        /// attention_prefill_tc_f16: a causal prompt of <paramref name="n"/> tokens over an F16 cache on
        /// tensor cores, checked on its first 16 rows against the float32 reference on the same binary16
        /// cache, within the bound the GPU suite derives (2^-10 of the largest value).
        /// </summary>
        private Result TensorCorePrefill(Shape s, int n, Random rng)
        {
            var (layout, blocks, table, cache, q, scale) = AttentionInputs(s, n, n, rng);
            cache = cache.Select(v => (float)(Half)v).ToArray(); // the values an F16 cache holds
            using var dh = gpu.Upload<Half>(cache.Select(v => (Half)v).ToArray());
            using var dt = gpu.Upload<int>(table);
            using var dq = gpu.Upload<float>(q);
            using var dy = gpu.Allocate<float>((long)n * s.Heads * s.HeadDim);
            void Launch() => K.Attention.AttentionF32(gpu, dq, n, s.Heads, dh.Span, blocks, layout, 0, dt, blocks, 0, default, 0, scale, default, dy,
                batchInvariant: false, tensorCores: true);
            Launch();
            var actual = gpu.Download<float>(dy);
            int rows = 16;
            var expected = new float[rows * s.Heads * s.HeadDim];
            // The reference on the queries the kernel multiplies (q·scale rounded to binary16); what remains is
            // the probabilities' rounding: at most 2^-11 of the largest value, 2^-10 with float32 sums.
            var rounded = q.Take(expected.Length).Select(x => (float)(Half)(x * scale) / scale).ToArray();
            KvCacheKernels.AttentionPrefillF32(rounded, rows, s.Heads, cache, layout, 0, table, 0, AttentionMask.Causal, scale, expected);
            double bound = Math.Pow(2, -10) * cache.Max(Math.Abs);
            int bad = Enumerable.Range(0, expected.Length).FirstOrDefault(i => Math.Abs(actual[i] - expected[i]) > bound, -1);
            double us = Time(Launch);
            double bytes = 4.0 * n * 2 * s.Heads * s.HeadDim + 2.0 * n * 2 * s.KvHeads * s.HeadDim;
            return new Result("attention_prefill_tc_f16", $"{s.Name} causal prefill of {n}", us, bytes, 2.0 * s.Heads * s.HeadDim * (double)n * n, bad < 0,
                bad < 0 ? "" : $"element {bad}: {actual[bad]} vs {expected[bad]}");
        }

        /// <summary>A random tree of <paramref name="nodes"/> nodes after a prefix of <paramref name="prefix"/> tokens: one launch for every node and head.</summary>
        private Result TreeAttention(Shape s, int prefix, int nodes, bool f16, Random rng)
        {
            int keys = (prefix + nodes + 31) / 32 * 32;
            var (layout, blocks, table, cache, q, scale) = AttentionInputs(s, keys, nodes, rng);
            if (f16)
                cache = cache.Select(v => (float)(Half)v).ToArray(); // the values an F16 cache holds
            var mask = AttentionMask.FromParents(Enumerable.Range(0, nodes).Select(i => i == 0 ? -1 : rng.Next(-1, i)).ToArray());
            using var dc = gpu.Upload<float>(f16 ? [0f] : cache);
            using var dh = gpu.Upload<Half>(f16 ? cache.Select(v => (Half)v).ToArray() : [(Half)0]);
            using var dt = gpu.Upload<int>(table);
            using var dq = gpu.Upload<float>(q);
            using var dm = gpu.Upload<ulong>(mask.Bits[..(nodes * mask.WordsPerRow)]);
            using var scratch = gpu.Allocate<float>(KvCacheKernels.ScratchFloats(s.Heads, nodes, s.HeadDim, prefix + nodes));
            using var dy = gpu.Allocate<float>((long)nodes * s.Heads * s.HeadDim);
            void Launch()
            {
                if (f16)
                    K.TreeAttention.TreeAttentionF32(gpu, dq, nodes, s.Heads, dh.Span, blocks, layout, 0, dt, blocks, prefix, dm, mask.WordsPerRow, scale, scratch, dy);
                else
                    K.TreeAttention.TreeAttentionF32(gpu, dq, nodes, s.Heads, dc.Span, blocks, layout, 0, dt, blocks, prefix, dm, mask.WordsPerRow, scale, scratch, dy);
            }
            Launch();
            var expected = new float[nodes * s.Heads * s.HeadDim];
            Backends.Cpu.Kernels.TreeAttention.TreeAttentionF32(q, nodes, s.Heads, cache, layout, 0, table, prefix, mask, scale, expected);
            bool valid = Close(gpu.Download<float>(dy), expected, 1e-5);
            double us = Time(Launch);
            double bytes = 2.0 * (f16 ? 2 : 4) * (prefix + nodes) * s.KvHeads * s.HeadDim + 8.0 * nodes * s.Heads * s.HeadDim; // K and V once, q in, out
            return new Result(f16 ? "tree_attention_f16" : "tree_attention_f32", $"{s.Name} tree of {nodes} after {prefix}", us, bytes, 4.0 * s.Heads * s.HeadDim * prefix * nodes, valid,
                valid ? "" : "differs from the CPU reference");
        }

        private static float[] Logits(Random rng, int rows, int vocab)
        {
            var x = new float[(long)rows * vocab];
            for (long i = 0; i < x.Length; i++)
                x[i] = (float)(rng.NextDouble() * 20 - 10); // a spread of about e^20 between tokens, as trained models give
            return x;
        }

        /// <summary>sample_f32 over the shape's vocabulary: the CLI's chain (T 0.8, top-k 40, top-p 0.95) with min-p 0.05, or top-p alone.</summary>
        private Result Sample(Shape s, int rows, Sampling.FusedSamplingParameters p, Random rng)
        {
            var x = Logits(rng, rows, s.Vocab);
            using var dx = gpu.Upload<float>(x);
            using var dtoken = gpu.Allocate<int>(rows);
            using var dprob = gpu.Allocate<float>(rows);
            void Launch() => K.Sampling.SampleF32(gpu, dx, rows, s.Vocab, p, 42, 0, default, dtoken, dprob, default, default);
            Launch();
            // Row 0 against the reference: the same token, unless a weight an ulp apart (a GPU's expf) moved a border.
            var probs = new float[s.Vocab];
            int expected = Sampling.FusedSampling.SampleF32(x.AsSpan(0, s.Vocab), p, 42, 0, 0, -1, out float prob, out _, probs);
            int token = gpu.Download<int>(dtoken)[0];
            bool valid = token == expected || (token >= 0 && Math.Abs(probs[token] - prob) < 1e-3);
            double us = Time(Launch);
            string chain = p.TopK > 0 ? "top-k 40, top-p 0.95, min-p 0.05" : "top-p 0.95";
            return new Result("sample_f32", $"{s.Name} vocab {s.Vocab}, {rows} row{(rows > 1 ? "s" : "")}, {chain}", us, 4.0 * rows * s.Vocab, 0, valid,
                valid ? "" : $"token {token}, the reference {expected}");
        }

        private Result TopKIds(Shape s, int rows, Random rng)
        {
            const int k = 8;
            var x = Logits(rng, rows, s.Vocab);
            using var dx = gpu.Upload<float>(x);
            using var ids = gpu.Allocate<int>(rows * k);
            void Launch() => K.Sampling.TopKIdsF32(gpu, dx, rows, s.Vocab, k, ids);
            Launch();
            var expected = new int[k];
            Sampling.FusedSampling.TopKIdsF32(x.AsSpan(0, s.Vocab), expected);
            bool valid = gpu.Download<int>(ids.Span.Slice(0, k)).AsSpan().SequenceEqual(expected);
            double us = Time(Launch);
            return new Result("top_k_ids_f32", $"{s.Name} top-{k} of {rows} rows", us, 4.0 * rows * s.Vocab, 0, valid, valid ? "" : "differs from the CPU reference");
        }

        private Result AcceptGreedy(Shape s, int nodes, Random rng)
        {
            var parent = Enumerable.Range(0, nodes).Select(i => i == 0 ? -1 : rng.Next(-1, i)).ToArray();
            var token = Enumerable.Range(0, nodes).Select(_ => rng.Next(4)).ToArray();
            var argmax = Enumerable.Range(0, nodes + 1).Select(_ => rng.Next(4)).ToArray();
            using var dp = gpu.Upload<int>(parent);
            using var dt = gpu.Upload<int>(token);
            using var da = gpu.Upload<int>(argmax);
            using var dout = gpu.Allocate<int>(K.Acceptance.OutputInts(nodes));
            void Launch() => K.Acceptance.AcceptGreedy(gpu, dp, dt, nodes, da, dout);
            Launch();
            var path = new List<int>();
            int next = Speculative.AcceptanceKernels.AcceptGreedy(parent, token, argmax, path);
            var output = gpu.Download<int>(dout);
            bool valid = output[1] == next && output.AsSpan(2, output[0]).SequenceEqual(path.ToArray());
            double us = Time(Launch);
            return new Result("accept_greedy", $"{s.Name} tree of {nodes}", us, 0, 0, valid, valid ? "" : "differs from the CPU reference");
        }

        /// <summary>accept_sampled on a chain of independent draws whose target rejects the first: a residual over the vocabulary is formed and drawn from.</summary>
        private Result AcceptSampled(Shape s, int nodes, Random rng)
        {
            int vocab = s.Vocab;
            var p = new Sampling.FusedSamplingParameters(1, 0, 1, 0);
            var logits = new float[(long)(nodes + 1) * vocab];
            var sampled = new int[nodes + 1];
            var stats = new Sampling.FusedSampling.RowStats[nodes + 1];
            var x = Logits(rng, 1, vocab);
            for (int r = 0; r <= nodes; r++)
            {
                x.CopyTo(logits, (long)r * vocab);
                sampled[r] = Sampling.FusedSampling.SampleF32(x, p, 1, 0, r, -1, out _, out _, out stats[r]);
            }
            var q = new float[vocab];
            Sampling.FusedSampling.SampleF32(Logits(rng, 1, vocab), p, 1, 0, 0, -1, out _, out _, q);
            var parent = Enumerable.Range(-1, nodes).ToArray();
            var token = Enumerable.Range(0, nodes).Select(_ => rng.Next(vocab)).ToArray();
            var qrow = new int[nodes + 1];
            var draw = Enumerable.Repeat(1, nodes + 1).ToArray();
            using var dlogits = gpu.Upload<float>(logits);
            using var dstats = gpu.Allocate<float>(3 * (nodes + 1));
            using var dsampled = gpu.Allocate<int>(nodes + 1);
            using var dprob = gpu.Allocate<float>(nodes + 1);
            K.Sampling.SampleF32(gpu, dlogits, nodes + 1, vocab, p, 1, 0, default, dsampled, dprob, default, default, dstats);
            using var dq = gpu.Upload<float>(q);
            using var dqrow = gpu.Upload<int>(qrow);
            using var ddraw = gpu.Upload<int>(draw);
            using var dp = gpu.Upload<int>(parent);
            using var dt = gpu.Upload<int>(token);
            using var residual = gpu.Allocate<float>(vocab);
            using var dout = gpu.Allocate<int>(K.Acceptance.OutputInts(nodes));
            void Launch() => K.Acceptance.AcceptSampled(gpu, dlogits, dstats, 1, dsampled, dq, dqrow, ddraw, dp, dt, nodes, vocab, 5, 0, residual, dout);
            Launch();
            var path = new List<int>();
            int next = Speculative.AcceptanceKernels.AcceptSampled(logits, stats, 1, sampled, q, qrow, draw, parent, token, vocab, 5, 0, path);
            var output = gpu.Download<int>(dout);
            bool valid = output[1] == next && output.AsSpan(2, output[0]).SequenceEqual(path.ToArray());
            double us = Time(Launch);
            return new Result("accept_sampled", $"{s.Name} chain of {nodes}, vocab {vocab}", us, 4.0 * vocab * 5, 0, valid,
                valid ? "" : $"next {output[1]} (path {output[0]}), the reference {next} (path {path.Count})");
        }

        private Result StoreKv(Shape s, Random rng)
        {
            var layout = new KvLayout(Layers: 1, KvHeads: s.KvHeads, HeadDim: s.HeadDim, BlockSize: 32);
            var k = Floats(rng, (long)s.KvHeads * s.HeadDim);
            using var dk = gpu.Upload<float>(k);
            using var dc = gpu.Allocate<float>(4 * KvCacheKernels.BlockFloats(layout));
            using var dt = gpu.Upload<int>([2, 3]);
            K.KvCache.StoreKvF32(gpu, dk, dk, 1, dt, 2, 40, dc, 4, layout, 0);
            var actual = gpu.Download<float>(dc.Span.Slice(KvCacheKernels.Index(layout, 3, 0, 0, 0, 8), s.HeadDim));
            bool valid = actual.AsSpan().SequenceEqual(k.AsSpan(0, s.HeadDim));
            double us = Time(() => K.KvCache.StoreKvF32(gpu, dk, dk, 1, dt, 2, 40, dc, 4, layout, 0));
            return new Result("store_kv_f32", $"{s.Name} one token", us, 16.0 * s.KvHeads * s.HeadDim, 0, valid, valid ? "" : "wrong slot");
        }

        private Result Gemm(Shape s, CuBlas blas, Random rng)
        {
            int n = 512, m = s.Ffn, k = s.Dim;
            var w = Floats(rng, (long)m * k);
            var x = Floats(rng, (long)n * k);
            using var dw = gpu.Upload<float>(w);
            using var dx = gpu.Upload<float>(x);
            using var hw = gpu.Allocate<Half>((long)m * k);
            using var hx = gpu.Allocate<Half>((long)n * k);
            using var dy = gpu.Allocate<float>((long)n * m);
            K.Dequantize.ConvertF32F16(gpu, dw, hw, (long)m * k);
            K.Dequantize.ConvertF32F16(gpu, dx, hx, (long)n * k);
            blas.GemmF16(hw, m, k, hx, n, dy);
            var y = gpu.Download<float>(dy.Span.Slice(0, m)); // row 0 of the output
            string problem = "";
            for (int j = 0; j < 64 && problem.Length == 0; j++)
            {
                double sum = 0, magnitude = 0;
                for (int i = 0; i < k; i++)
                {
                    double a = (double)(Half)w[(long)j * k + i] * (double)(Half)x[i];
                    sum += a;
                    magnitude += Math.Abs(a);
                }
                if (Math.Abs(y[j] - sum) > (2.0 * k + 4) * U * magnitude)
                    problem = $"output {j}: {y[j]} vs {sum}";
            }
            double us = Time(() => blas.GemmF16(hw, m, k, hx, n, dy));
            return new Result("cublas_gemm_f16", $"{s.Name} prefill {n} × ffn_up [{m}×{k}]", us, 2.0 * (m + n) * k + 4.0 * n * m, 2.0 * n * m * k,
                problem.Length == 0, problem);
        }
    }
}
