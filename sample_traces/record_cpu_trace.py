"""Record a real PyTorch-profiler CPU trace of a tiny decoder-only transformer.

One prefill of PROMPT_TOKENS tokens, then DECODE_STEPS greedy decode steps with a KV
cache, each inside `record_function("prefill")` / `record_function("decode")` and one
`prof.step()` per step, so the trace has `ProfilerStep#N` annotations the way a serving
loop profiled with torch.profiler does. Weights are random (seeded): the point is the
shape of the trace, not the text.

    python sample_traces/record_cpu_trace.py [OUT.json.gz]

Writes sample_traces/cpu_tiny_decoder_prefill_decode.json.gz by default.
"""
from __future__ import annotations

import gzip
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function, schedule

SEED = 0
VOCAB = 256
D_MODEL = 64
N_HEADS = 4
N_LAYERS = 2
D_FF = 4 * D_MODEL
PROMPT_TOKENS = 32
DECODE_STEPS = 8
DEFAULT_OUT = Path(__file__).resolve().parent / "cpu_tiny_decoder_prefill_decode.json.gz"


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(D_MODEL, 3 * D_MODEL, bias=False)
        self.out = nn.Linear(D_MODEL, D_MODEL, bias=False)

    def forward(self, x: torch.Tensor, cache: list[torch.Tensor] | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        batch, seq, _ = x.shape
        head_dim = D_MODEL // N_HEADS
        q, k, v = self.qkv(x).split(D_MODEL, dim=-1)
        q, k, v = (t.view(batch, seq, N_HEADS, head_dim).transpose(1, 2) for t in (q, k, v))
        if cache is not None:  # decode: attend over everything seen so far
            k = torch.cat([cache[0], k], dim=2)
            v = torch.cat([cache[1], v], dim=2)
        # Causal only within the new tokens: a decode token may see the whole cache.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=cache is None)
        y = y.transpose(1, 2).reshape(batch, seq, D_MODEL)
        return self.out(y), [k, v]


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = RMSNorm(D_MODEL)
        self.attn = Attention()
        self.norm2 = nn.LayerNorm(D_MODEL)
        self.up = nn.Linear(D_MODEL, D_FF)
        self.down = nn.Linear(D_FF, D_MODEL)

    def forward(self, x, cache):
        h, cache = self.attn(self.norm1(x), cache)
        x = x + h
        x = x + self.down(F.gelu(self.up(self.norm2(x))))
        return x, cache


class TinyDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D_MODEL)
        self.blocks = nn.ModuleList(Block() for _ in range(N_LAYERS))
        self.norm = RMSNorm(D_MODEL)
        self.head = nn.Linear(D_MODEL, VOCAB, bias=False)

    def forward(self, tokens: torch.Tensor, caches: list | None):
        x = self.embed(tokens)
        new_caches = []
        for i, block in enumerate(self.blocks):
            x, cache = block(x, None if caches is None else caches[i])
            new_caches.append(cache)
        return self.head(self.norm(x[:, -1:, :])), new_caches


def record(out: Path) -> Path:
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    model = TinyDecoder().eval()
    prompt = torch.randint(0, VOCAB, (1, PROMPT_TOKENS))
    # A schedule is what makes prof.step() record `ProfilerStep#N` ranges. Step 0 is the
    # warm-up (first-call costs are not the point) and is not recorded; steps 1..N are.
    active = 1 + DECODE_STEPS
    traces: list[Path] = []
    tmp = tempfile.TemporaryDirectory()

    def export(prof) -> None:
        raw = Path(tmp.name) / "trace.json"
        prof.export_chrome_trace(str(raw))
        traces.append(raw)

    with torch.inference_mode(), profile(
        activities=[ProfilerActivity.CPU], record_shapes=True, with_stack=False,
        schedule=schedule(wait=0, warmup=1, active=active, repeat=1), on_trace_ready=export,
    ) as prof:
        model(prompt, None)  # step 0: warm-up
        prof.step()
        with record_function("prefill"):
            logits, caches = model(prompt, None)
            next_id = int(logits.argmax(-1).item())  # the sampled token goes back to the host
        prof.step()
        for _ in range(DECODE_STEPS):
            with record_function("decode"):
                logits, caches = model(torch.tensor([[next_id]]), caches)
                next_id = int(logits.argmax(-1).item())
            prof.step()
    if len(traces) != 1:
        raise RuntimeError(f"expected one trace from the schedule, got {len(traces)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with traces[0].open("rb") as src, gzip.open(out, "wb", compresslevel=9) as dst:
        shutil.copyfileobj(src, dst)
    tmp.cleanup()
    return out


if __name__ == "__main__":
    path = record(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
    print(f"{path} ({path.stat().st_size} bytes)")
