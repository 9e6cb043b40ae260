"""`edge-model train`: the GPT on a labelled CSV, as a language model that also learns the label token.

Loss = lm_weight * (next-token loss on the tweet text and <|endoftext|>)
     + cross-entropy of the label token over the three label tokens (label smoothing).
The LM term is the pre-training signal on tiny data; the label term is what
classification reads. Weights are averaged (EMA) and the EMA model is what is
evaluated and checkpointed for export. Then (`--ngrams`, the default) the
bag-of-n-grams head of model/ngrams.py is fitted on the same training rows, and
the temperature fitted on the validation split calibrates the classifier's
scores: the LM's label log-probabilities plus the head's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from pathlib import Path

import structlog
import torch
from edgewatch.model import ngrams
from edgewatch.model.data import read_labelled, split
from edgewatch.model.evaluate import metrics
from edgewatch.model.format.prompt import (
    SPECIAL_TOKENS,
    classification_ids,
    label_ids,
    normalise,
    training_ids,
)
from edgewatch.model.format.tokenizer import Tokenizer
from edgewatch.model.gpt import GPT, GPTConfig
from torch.nn import functional as F
from tqdm import tqdm

log = structlog.get_logger("edgewatch.model.train")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA GPU is usable by torch here")
    return torch.device(name)


def pad_batch(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad -> (ids [B, T], lengths [B])."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
    return ids, torch.tensor([len(s) for s in seqs])


def batch_loss(model, seqs, tok: Tokenizer, labels: torch.Tensor, args, device,
               pretrain: bool = False) -> tuple[torch.Tensor, int]:
    """Both loss terms for a batch of training sequences (`pretrain`: the text's LM loss alone);
    returns (loss, real input tokens)."""
    ids, lengths = pad_batch(seqs, tok.eot_id)
    x, y = ids[:, :-1].to(device), ids[:, 1:].clone()
    T = y.shape[1]
    pos = torch.arange(T).unsqueeze(0)
    sent_pos = lengths - 3  # input position of <|sentiment|>; its target is the label token
    y[pos >= (lengths - 1).unsqueeze(1)] = -1
    y[torch.arange(len(seqs)), sent_pos] = -1
    if args.token_noise:  # augmentation: replace a fraction of the TEXT inputs by random byte/merge tokens
        noisy = (torch.rand(x.shape) < args.token_noise) & (pos < sent_pos.unsqueeze(1))
        x = torch.where(noisy.to(device), torch.randint_like(x, len(tok.vocab)), x)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits, _ = model(x)
    logits = logits.float()
    lm = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1).to(device), ignore_index=-1)
    cls_logits = logits[torch.arange(len(seqs), device=device), sent_pos.to(device)][:, label_ids(tok)]
    cls = F.cross_entropy(cls_logits, labels.to(device), label_smoothing=args.label_smoothing)
    return (lm if pretrain else args.lm_weight * lm + cls), int((lengths - 1).sum())


@torch.no_grad()
def label_logits(model, tok: Tokenizer, texts: list[str], device, lowercase: bool, batch_size: int = 256) -> torch.Tensor:
    """[N, 3] label logits at <|sentiment|> (right padding: read each row at its own last position)."""
    model.eval()
    out = []
    for i in range(0, len(texts), batch_size):
        seqs = [classification_ids(tok, t, model.config.block_size, lowercase) for t in texts[i:i + batch_size]]
        ids, lengths = pad_batch(seqs, tok.eot_id)
        logits, _ = model(ids.to(device))
        out.append(logits[torch.arange(len(seqs)), (lengths - 1).to(device)][:, label_ids(tok)].float().cpu())
    return torch.cat(out)


def validate(model, tok, val_rows, device, lowercase: bool) -> dict:
    z = label_logits(model, tok, [t for t, _ in val_rows], device, lowercase)
    y = torch.tensor([label for _, label in val_rows])
    m = metrics(y.tolist(), z.argmax(1).tolist())
    m["loss"] = float(F.cross_entropy(z, y))
    return m


def fit_temperature(z: torch.Tensor, y: torch.Tensor) -> float:
    """Calibration: the temperature minimising validation NLL (grid, log-spaced 0.25..4)."""
    grid = torch.logspace(math.log10(0.25), math.log10(4.0), 121)
    nll = torch.stack([F.cross_entropy(z / t, y) for t in grid])
    return float(grid[nll.argmin()])


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def epoch_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """One epoch's batches: shuffled, then sorted by length inside chunks of 16 batches, so
    padding (wasted compute) stays small while batch order stays random."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(lengths), generator=g).tolist()
    chunk = batch_size * 16
    batches = []
    for i in range(0, len(perm), chunk):
        part = sorted(perm[i:i + chunk], key=lambda j: lengths[j])
        batches += [part[k:k + batch_size] for k in range(0, len(part), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def lr_at(step: int, total: int, args) -> float:
    warmup = max(1, int(0.05 * total))
    if step < warmup:
        return args.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * progress))


def train(args) -> Path:
    """Train (or resume) and write `<out>/ckpt.pt`; returns its path."""
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data_path = Path(args.data)
    rows = read_labelled(data_path)
    train_rows, val_rows = split(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "ckpt.pt"
    resume = torch.load(ckpt_path, map_location="cpu", weights_only=False) if args.resume and ckpt_path.exists() else None
    if resume:
        tok = Tokenizer.from_json(resume["tokenizer"])
        config = GPTConfig(**resume["config"])
        args.lowercase = resume["args"].get("lowercase", False)  # the text as the tokenizer and weights saw it
    else:
        tok = Tokenizer.train([normalise(t, args.lowercase) for t, _ in train_rows], args.vocab_size, SPECIAL_TOKENS)
        config = GPTConfig(block_size=args.block_size, vocab_size=tok.vocab_size, n_layer=args.n_layer,
                           n_head=args.n_head, n_embd=args.n_embd, dropout=args.dropout)
    model = GPT(config).to(device)
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))
    step = 0
    if resume:
        model.load_state_dict(resume["model"])
        ema.load_state_dict(resume["ema"])
        opt.load_state_dict(resume["optimizer"])
        step = resume["step"]
        torch.set_rng_state(resume["rng"])
    fwd = torch.compile(model) if args.compile else model

    seqs = [training_ids(tok, t, label, config.block_size, args.lowercase) for t, label in train_rows]
    labels = torch.tensor([label for _, label in train_rows])
    steps_per_epoch = len(epoch_batches([len(s) for s in seqs], args.batch_size, 0))
    total = args.max_steps or steps_per_epoch * args.epochs
    log.info("train", device=str(device), params=model.num_params(), vocab=tok.vocab_size,
             train_rows=len(train_rows), val_rows=len(val_rows), steps=total, resume_step=step)

    def save(val: dict | None, temperature: float | None = None, head: ngrams.NgramHead | None = None) -> None:
        torch.save({
            "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
            "config": config.to_dict(), "tokenizer": tok.to_json(), "step": step, "args": vars(args),
            "val": val, "temperature": temperature, "rng": torch.get_rng_state(),
            "ngrams": dataclasses.asdict(head) if head else None,
            "data": {"path": str(data_path.resolve()), "sha256": file_sha256(data_path), "rows": len(rows),
                     "train_rows": len(train_rows), "val_rows": len(val_rows)},
        }, ckpt_path.with_suffix(".tmp"))
        ckpt_path.with_suffix(".tmp").replace(ckpt_path)

    bar = tqdm(total=total, initial=step, desc="train", dynamic_ncols=True)
    tokens, t0, val, batches = 0, time.perf_counter(), None, None
    stop = min(total, step + args.stop_after) if args.stop_after else total
    while step < stop:
        epoch, offset = divmod(step, steps_per_epoch)
        if offset == 0 or batches is None:
            batches = epoch_batches([len(s) for s in seqs], args.batch_size, args.seed * 1000 + epoch)
        batch = batches[offset]
        model.train()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, args)
        loss, n = batch_loss(fwd, [seqs[i] for i in batch], tok, labels[batch], args, device,
                             pretrain=epoch < args.pretrain_epochs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update_parameters(model)
        step += 1
        tokens += n
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tokens / (time.perf_counter() - t0):.0f}")
        if step % args.eval_every == 0 or step == stop:
            val = validate(ema.module, tok, val_rows, device, args.lowercase)
            bar.write(f"step {step}: val loss {val['loss']:.4f} acc {val['accuracy']:.4f} "
                      f"macro-F1 {val['macro_f1']:.4f}")
            save(val)
    bar.close()
    if step < total:
        log.info("stopped early; continue with --resume", step=step, total=total)
        return ckpt_path
    val = val or validate(ema.module, tok, val_rows, device, args.lowercase)
    y_val = torch.tensor([label for _, label in val_rows])
    z = label_logits(ema.module, tok, [t for t, _ in val_rows], device, args.lowercase)
    head = None
    if args.ngrams:  # the bag of n-grams beside the LM (model/ngrams.py), fitted on the training rows alone
        seqs = [classification_ids(tok, t, config.block_size, args.lowercase) for t, _ in train_rows]
        head = ngrams.fit(seqs, [label for _, label in train_rows], len(tok.vocab), seed=args.seed)
        val_seqs = [classification_ids(tok, t, config.block_size, args.lowercase) for t, _ in val_rows]
        bag = torch.from_numpy(ngrams.log_probs(head, val_seqs)).float()
        val["ngrams_alone"] = metrics(y_val.tolist(), bag.argmax(1).tolist())
        z = F.log_softmax(z, dim=-1) + bag
        val["classifier"] = metrics(y_val.tolist(), z.argmax(1).tolist())  # `val` itself: the LM alone
    temperature = fit_temperature(z, y_val)
    if tokens:  # a resumed, already finished run keeps the figures of the run that trained it
        val["tokens_per_s"] = tokens / max(time.perf_counter() - t0, 1e-9)
        val["device"] = str(device)
    save(val, temperature, head)
    log.info("trained", checkpoint=str(ckpt_path), lm_accuracy=val["accuracy"],
             ngrams_accuracy=val.get("ngrams_alone", {}).get("accuracy"),
             accuracy=val.get("classifier", val)["accuracy"], macro_f1=val.get("classifier", val)["macro_f1"],
             temperature=temperature, tokens_per_s=round(val.get("tokens_per_s") or 0))
    return ckpt_path


def train_command(args) -> int:
    train(args)
    return 0
