#!/usr/bin/env python3
"""The gpt_kjv model in one PyTorch process: a speed and loss reference.

The same architecture as examples/gpt_kjv (troupe::actors::GptStage): token
and position embeddings, pre-norm blocks (layer norm, causal multi-head
attention with a fused QKV projection and an output projection, layer norm,
GELU (tanh) MLP, residual adds), a final layer norm, a linear head with bias
and cross-entropy per character; AdamW (betas 0.9/0.999, eps 1e-8) with
weight decay on matrices only, gradients clipped to global norm --clip-norm
(torch.nn.utils.clip_grad_norm_), the learning rate warmed up linearly over
--warmup steps, then a cosine down to --lr-min at the end of the run (of
--steps, else of --minutes of training time). The same text: `bible -f
'Genesis 1:1 - Revelation 22:21'`, verse labels dropped, the books from
--val-from (1Pet) held out. Trains for --minutes (or --steps) on the CPU and
prints the loss curve and the final validation loss in nats per character.

  python3 examples/gpt_kjv/reference.py --minutes 15
  python3 examples/gpt_kjv/reference.py --steps 200 --threads 2

--list-parameters prints every tensor's shape and size (the model has
L (4C^2 + 2CF + 9C + F) + 2VC + TC + 2C + V parameters, as troupe's
gpt_parameter_count).

Needs Debian's python3-torch (1.13); troupe's build and tests do not.
"""
import argparse
import math
import re
import subprocess
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    sys.exit("reference.py: needs PyTorch (Debian: apt-get install python3-torch)")

LABEL = re.compile(r"^([0-9]?[A-Za-z]+)[0-9]+:[0-9]+ (.*)$")


def load_text(path, val_from):
    if path:
        with open(path, encoding="latin-1") as f:
            raw = f.read()
    else:
        raw = subprocess.run(["bible", "-f", "Genesis 1:1 - Revelation 22:21"], check=True,
                             capture_output=True).stdout.decode("latin-1")
    train, val, in_val = [], [], False
    for line in raw.split("\n"):
        m = LABEL.match(line)
        if not m:
            continue
        if m.group(1) == val_from:
            in_val = True
        (val if in_val else train).append(m.group(2) + "\n")
    return "".join(train), "".join(val)


class Block(nn.Module):
    def __init__(self, c, heads, hidden):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(c)
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)
        self.ln2 = nn.LayerNorm(c)
        self.up = nn.Linear(c, hidden)
        self.down = nn.Linear(hidden, c)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(c // self.heads)
        mask = torch.ones(t, t, dtype=torch.bool).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
        y = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, t, c)
        x = x + self.proj(y)
        return x + self.down(F.gelu(self.up(self.ln2(x)), approximate="tanh"))


class Gpt(nn.Module):
    def __init__(self, vocab, seq_len, c, heads, hidden, layers):
        super().__init__()
        self.tok = nn.Parameter(torch.empty(vocab, c).uniform_(-0.1, 0.1))
        self.pos = nn.Parameter(torch.empty(seq_len, c).uniform_(-0.1, 0.1))
        self.blocks = nn.ModuleList(Block(c, heads, hidden) for _ in range(layers))
        self.lnf = nn.LayerNorm(c)
        self.head = nn.Linear(c, vocab)

    def forward(self, tokens, targets):
        x = self.tok[tokens] + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.lnf(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--lr-min", type=float, default=-1.0, help="the cosine's floor (default: lr / 10)")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--clip-norm", type=float, default=1.0, help="0: no clipping")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-batches", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--text", default="")
    p.add_argument("--val-from", default="1Pet")
    p.add_argument("--list-parameters", action="store_true")
    a = p.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)

    train_text, val_text = load_text(a.text, a.val_from)
    chars = sorted(set(train_text) | set(val_text))
    index = {ch: i for i, ch in enumerate(chars)}
    train = torch.tensor([index[ch] for ch in train_text], dtype=torch.long)
    val = torch.tensor([index[ch] for ch in val_text], dtype=torch.long)
    T = a.seq_len
    model = Gpt(len(chars), T, a.channels, a.heads, a.hidden, a.layers)
    params = sum(x.numel() for x in model.parameters())
    decay = [x for x in model.parameters() if x.dim() == 2]
    no_decay = [x for x in model.parameters() if x.dim() != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.999), eps=1e-8)
    print(f"reference: PyTorch {torch.__version__}, {a.threads} threads, {params} parameters, "
          f"vocabulary {len(chars)}, {len(train)} training / {len(val)} validation characters")
    lr_min = a.lr / 10 if a.lr_min < 0 else a.lr_min
    print(f"  batch {a.batch} x {T}, AdamW lr {a.lr:g} (warmup {a.warmup} steps, cosine to {lr_min:g}) "
          f"weight decay {a.weight_decay:g}, clip norm {a.clip_norm:g}")
    if a.list_parameters:
        for name, x in model.named_parameters():
            print(f"  {name:20s} {str(list(x.shape)):12s} {x.numel():8d}")

    def learning_rate(step, progress):
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        progress = min(max(progress, 0.0), 1.0)
        return lr_min + 0.5 * (a.lr - lr_min) * (1 + math.cos(math.pi * progress))

    def windows(stream, offsets):
        idx = torch.tensor(offsets).unsqueeze(1) + torch.arange(T + 1)
        w = stream[idx]
        return w[:, :-1], w[:, 1:]

    windows_total = a.batch * a.eval_batches
    val_batches = [windows(val, [(len(val) - T - 1) * (i * a.batch + r) // windows_total for r in range(a.batch)])
                   for i in range(a.eval_batches)]

    def val_loss():
        with torch.no_grad():
            return sum(model(x, y).item() for x, y in val_batches) / len(val_batches)

    trained, step, recent = 0.0, 0, []
    limit = math.inf if a.steps else a.minutes * 60
    print(f"  {'STEP':>6}  {'TIME s':>8}  {'TRAIN':>10}  {'VALIDATION':>10}  {'LR':>9}  {'GRAD NORM':>9}")
    norms, clipped = [], 0
    while (a.steps == 0 or step < a.steps) and trained < limit:
        x, y = windows(train, torch.randint(0, len(train) - T - 1, (a.batch,)).tolist())
        progress = (step - a.warmup) / max(1, a.steps - a.warmup) if a.steps else trained / limit
        lr = learning_rate(step, progress)
        for group in opt.param_groups:
            group["lr"] = lr
        start = time.perf_counter()
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if a.clip_norm > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip_norm))
            norms.append(norm)
            clipped += norm > a.clip_norm
        opt.step()
        trained += time.perf_counter() - start
        recent.append(loss.item())
        step += 1
        last = (a.steps and step == a.steps) or trained >= limit
        if step % a.eval_every == 0 or last:
            norm = f"{sum(norms) / len(norms):.3f}" if norms else "-"
            print(f"  {step:6d}  {trained:8.1f}  {sum(recent) / len(recent):10.4f}  {val_loss():10.4f}  {lr:9.2e}  "
                  f"{norm:>9}", flush=True)
            recent, norms = [], []
    print(f"result: validation loss {val_loss():.4f} nats/char after {step} steps, {trained:.1f} s of training "
          f"({step / trained:.2f} steps/s)" + (f"; {clipped} of {step} steps clipped to norm {a.clip_norm:g}"
                                               if a.clip_norm > 0 else ""))


if __name__ == "__main__":
    main()
