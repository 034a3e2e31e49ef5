#!/usr/bin/env python3
"""PyTorch doing the decode matrix-vector products of kernels-bench on the same machine, in the same
device call: the peer our gemv kernels are compared with (docs/benchmarks.md). PyTorch has no GGUF
block formats, so it runs F16, BF16 and F32 weights; the quantized kernels are compared through
bandwidth (bytes moved per second). One JSON object per line, like `engine kernels-bench --json`."""
import json
import torch

SHAPES = {
    "tinyllama-1.1b": dict(dim=2048, ffn=5632, heads=32, kv_heads=4, vocab=32000),
    "llama-3-8b": dict(dim=4096, ffn=14336, heads=32, kv_heads=8, vocab=128256),
}
CALLS, REPS = 20, 9


def time_us(fn):
    for _ in range(3):
        fn()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(REPS):
        start.record()
        for _ in range(CALLS):
            fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) * 1000.0 / CALLS)
    return sorted(times)[REPS // 2]


def main():
    dev = torch.device("cuda")
    print(json.dumps({"device": torch.cuda.get_device_name(0), "torch": torch.__version__}))
    a = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    b = torch.empty_like(a)
    us = time_us(lambda: b.copy_(a))
    print(json.dumps({"kernel": "torch copy", "shape": "1 GiB", "us_per_call": us, "gbs": 2 * (1 << 30) / (us * 1e-6) / 1e9}))
    del a, b
    for name, s in SHAPES.items():
        head_dim = s["dim"] // s["heads"]
        matrices = [("attn_q", s["dim"], s["dim"]), ("attn_kv", s["kv_heads"] * head_dim, s["dim"]), ("ffn_up", s["ffn"], s["dim"]),
                    ("ffn_down", s["dim"], s["ffn"]), ("output", s["vocab"], s["dim"])]
        for dtype, label in ((torch.float16, "f16"), (torch.bfloat16, "bf16"), (torch.float32, "f32")):
            for matrix, rows, cols in matrices:
                if dtype != torch.float16 and matrix != "ffn_up":
                    continue
                w = torch.randn(rows, cols, device=dev, dtype=dtype)
                x = torch.randn(cols, device=dev, dtype=dtype)
                y = torch.empty(rows, device=dev, dtype=dtype)
                us = time_us(lambda: torch.mv(w, x, out=y))
                size = w.element_size()
                bytes_moved = rows * cols * size + (rows + cols) * size
                print(json.dumps({"kernel": f"torch.mv {label}", "shape": f"{name} {matrix} [{rows}x{cols}]", "us_per_call": us,
                                  "gbs": bytes_moved / (us * 1e-6) / 1e9}))
                del w, x, y
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
