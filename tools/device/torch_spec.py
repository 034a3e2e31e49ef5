#!/usr/bin/env python3
"""PyTorch doing the jobs of the three speculative kernels, on the same machine in the same device call:
the peers `engine kernels-bench` rows sample_f32, tree_attention_f32 and accept_* are compared with
(docs/benchmarks.md). One JSON object per line.
- sampling: temperature, top-k by masking, top-p by sorting (HF transformers' warpers), softmax and
  torch.multinomial — the sort-based path FlashInfer's sorting-free kernels replace;
- tree attention: scaled_dot_product_attention with the tree's boolean mask over prefix + nodes
  (grouped-query heads expanded, as a PyTorch decoder without GQA support does);
- acceptance: greedy match and speculative sampling of a chain in torch ops (argmax / ratio test,
  first rejection by cumprod, residual max(0, p - q) renormalized and drawn)."""
import json
import math
import torch

from torch_gemv import SHAPES, time_us


def sort_sample(logits, temperature=0.8, top_k=40, top_p=0.95):
    x = logits / temperature
    if top_k:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    sorted_x, index = torch.sort(x, descending=False, dim=-1)
    cumulative = sorted_x.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)
    remove[..., -1:] = False
    remove = remove.scatter(-1, index, remove)
    x = x.masked_fill(remove, float("-inf"))
    return torch.multinomial(x.softmax(dim=-1), 1)


def tree_mask(nodes, prefix, generator):
    parents = [-1] + [int(torch.randint(-1, i, (1,), generator=generator)) for i in range(1, nodes)]
    mask = torch.zeros(nodes, prefix + nodes, dtype=torch.bool)
    mask[:, :prefix] = True
    for i in range(nodes):
        a = i
        while a >= 0:
            mask[i, prefix + a] = True
            a = parents[a]
    return mask


def main():
    g = torch.Generator().manual_seed(1)
    for name, s in SHAPES.items():
        vocab = s["vocab"]
        for rows in (1, 8, 64):
            logits = (torch.rand(rows, vocab, generator=g) * 20 - 10).cuda()
            us = time_us(lambda: sort_sample(logits))
            print(json.dumps(dict(job="sort_sample_torch", shape=name, vocab=vocab, rows=rows, chain="top-k 40, top-p 0.95", us_per_call=us)))
            if rows in (1, 64):
                us = time_us(lambda: sort_sample(logits, top_k=0))
                print(json.dumps(dict(job="sort_sample_torch", shape=name, vocab=vocab, rows=rows, chain="top-p 0.95", us_per_call=us)))

        heads, kv, hd = s["heads"], s["kv_heads"], s["dim"] // s["heads"]
        prefix = 512
        for nodes in (1, 8, 16, 64):
            q = torch.randn(1, heads, nodes, hd, generator=g).cuda()
            k = torch.randn(1, kv, prefix + nodes, hd, generator=g).cuda().repeat_interleave(heads // kv, dim=1)
            v = torch.randn(1, kv, prefix + nodes, hd, generator=g).cuda().repeat_interleave(heads // kv, dim=1)
            mask = tree_mask(nodes, prefix, g).cuda()
            us = time_us(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask))
            print(json.dumps(dict(job="sdpa_tree_torch", shape=name, nodes=nodes, prefix=prefix, us_per_call=us)))

        n = 16
        target = (torch.rand(n + 1, vocab, generator=g) * 20 - 10).cuda()
        draft_tokens = torch.randint(0, vocab, (n,), generator=g).cuda()

        def greedy():
            best = target.argmax(dim=-1)
            match = (best[:n] == draft_tokens).int()
            accepted = int(match.cumprod(0).sum())
            return accepted, int(best[accepted])

        print(json.dumps(dict(job="accept_greedy_torch", shape=name, nodes=n, us_per_call=time_us(greedy))))
        p = target.softmax(dim=-1)
        q = (torch.rand(n, vocab, generator=g) * 20 - 10).cuda().softmax(dim=-1)

        def speculative_sampling():
            rows = torch.arange(n, device="cuda")
            ratio = (p[rows, draft_tokens] / q[rows, draft_tokens]).clamp(max=1)
            accept = (torch.rand(n, device="cuda") < ratio).int()
            accepted = int(accept.cumprod(0).sum())
            if accepted == n:
                return accepted, int(torch.multinomial(p[n], 1))
            residual = (p[accepted] - q[accepted]).clamp(min=0)
            return accepted, int(torch.multinomial(residual / residual.sum(), 1))

        print(json.dumps(dict(job="accept_sampled_torch", shape=name, nodes=n, vocab=vocab, us_per_call=time_us(speculative_sampling))))


if __name__ == "__main__":
    main()
