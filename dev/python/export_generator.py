"""Writes the untrained reference background generator: a small conditional inpainting
denoiser (pixel space) and a prompt encoder as TorchScript, and a WordLevel tokenizer.json.

The fleet trains it afterwards with its own fine_tune job (target background_generator);
this script only fixes the architecture and the seeded initial weights. The denoiser follows
the generator contract of common/src/manifest/generator.rs:

    denoiser.forward(x_t [B,3,h,w], t [B] int64, masked [B,3,h,w], mask [B,1,h,w],
                     cond [B,D]) -> epsilon [B,3,h,w]
    text_encoder.forward(ids [B,L] int64) -> cond [B,D]   (mean of the tokens' vectors,
                                                             zeros for an empty prompt)

Usage: export_generator.py OUT_DIR --vocab w1,w2,... --seed N [--width 32 --cond-dim 32]
"""

import argparse
import json
import math
import os

import torch
import torch.nn.functional as F
from torch import nn

PAD, UNK = "[PAD]", "[UNK]"


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps, [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32).unsqueeze(1) * freqs.unsqueeze(0)
    return torch.cat([torch.cos(args), torch.sin(args)], 1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the second norm modulated (scale, shift) by the embedding."""

    def __init__(self, c_in: int, c_out: int, emb: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb, 2 * c_out)
        self.norm2 = nn.GroupNorm(8, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(e).unsqueeze(-1).unsqueeze(-1).chunk(2, 1)
        h = self.norm2(h) * (1.0 + scale) + shift
        h = self.conv2(F.silu(h))
        return h + self.skip(x)


class Denoiser(nn.Module):
    """A two-level U-Net over [noisy sample, masked image, mask], conditioned on the
    timestep and the prompt embedding; sides must be multiples of 4."""

    def __init__(self, width: int, cond_dim: int):
        super().__init__()
        emb = 4 * width
        self.time = nn.Sequential(nn.Linear(width, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.cond = nn.Sequential(nn.Linear(cond_dim, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.width = width
        self.inp = nn.Conv2d(3 + 3 + 1, width, 3, padding=1)
        self.enc1 = ResBlock(width, width, emb)
        self.down1 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.enc2 = ResBlock(2 * width, 2 * width, emb)
        self.down2 = nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1)
        self.mid = ResBlock(2 * width, 2 * width, emb)
        self.dec2 = ResBlock(4 * width, 2 * width, emb)
        self.dec1 = ResBlock(3 * width, width, emb)
        self.norm = nn.GroupNorm(8, width)
        self.out = nn.Conv2d(width, 3, 3, padding=1)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, masked: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor:
        e = self.time(timestep_embedding(t, self.width)) + self.cond(cond)
        h0 = self.enc1(self.inp(torch.cat([x, masked, mask], 1)), e)
        h1 = self.enc2(self.down1(h0), e)
        h = self.mid(self.down2(h1), e)
        h = F.interpolate(h, size=[h1.shape[2], h1.shape[3]], mode="nearest")
        h = self.dec2(torch.cat([h, h1], 1), e)
        h = F.interpolate(h, size=[h0.shape[2], h0.shape[3]], mode="nearest")
        h = self.dec1(torch.cat([h, h0], 1), e)
        return self.out(F.silu(self.norm(h)))


class TextEncoder(nn.Module):
    """Mean of the prompt's token vectors (fixed, seeded); padding counts for nothing, so
    the empty prompt encodes to zeros: the unconditional embedding."""

    def __init__(self, vocab: int, dim: int, pad_id: int):
        super().__init__()
        self.table = nn.Parameter(torch.randn(vocab, dim), requires_grad=False)
        self.pad_id = pad_id

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        keep = (ids != self.pad_id).to(torch.float32).unsqueeze(-1)
        vectors = F.embedding(ids, self.table) * keep
        return vectors.sum(1) / keep.sum(1).clamp(min=1.0)


def tokenizer_json(words):
    """A `tokenizers` WordLevel tokenizer: lower-cased, split on whitespace and punctuation."""
    vocab = {PAD: 0, UNK: 1}
    for w in words:
        vocab.setdefault(w.lower(), len(vocab))
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for tok, i in ((PAD, 0), (UNK, 1))
        ],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": UNK},
    }, len(vocab)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--vocab", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--cond-dim", type=int, default=32)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    tok, vocab_size = tokenizer_json([w for w in args.vocab.split(",") if w])
    with open(os.path.join(args.out, "tokenizer.json"), "w") as f:
        json.dump(tok, f)
    denoiser = torch.jit.script(Denoiser(args.width, args.cond_dim))
    denoiser.save(os.path.join(args.out, "denoiser.pt"))
    encoder = torch.jit.script(TextEncoder(vocab_size, args.cond_dim, 0))
    encoder.save(os.path.join(args.out, "text_encoder.pt"))
    params = sum(p.numel() for p in denoiser.parameters())
    print(json.dumps({"parameters": params, "vocab": vocab_size, "cond_dim": args.cond_dim}))


if __name__ == "__main__":
    main()
