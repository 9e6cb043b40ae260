"""`edge-model`: train, export, eval, generate (docs/reference/commands.md).

torch is imported only by `train` and `export`; `eval` and `generate` run the
exported model through the sidecar's Engine. Exit codes: 0 success, 2 usage or
input error (one line on stderr naming the flag or file), 1 runtime failure.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from edgewatch.common import __version__, logs
from edgewatch.model.data import DataError

HANDLERS = {
    "train": "edgewatch.model.train:train_command",
    "export": "edgewatch.model.export:export_command",
    "eval": "edgewatch.model.evaluate:eval_command",
    "generate": "edgewatch.model.evaluate:generate_command",
}


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Defaults are the shipped model's configuration."""
    p.add_argument("--data", required=True, help="labelled CSV (text,label)")
    p.add_argument("--out", default="runs/model", help="directory for ckpt.pt")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0 = epochs decide)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/ckpt.pt")
    p.add_argument("--stop-after", type=int, default=0, help="end this run after N steps (checkpointed; --resume goes on)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr", type=float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--ema", type=float, default=0.995, help="EMA decay of the averaged weights")
    p.add_argument("--lm-weight", type=float, default=0.5, help="weight of the next-token loss on the text")
    p.add_argument("--pretrain-epochs", type=int, default=0,
                   help="first epochs on the language-model loss alone, before the label term joins")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=True,
                   help="lower-case the text before tokenizing (recorded in model.json; the sidecar does the same)")
    p.add_argument("--ngrams", action=argparse.BooleanOptionalAction, default=True,
                   help="fit the bag-of-n-grams head read beside the LM (model/ngrams.py; needs scikit-learn)")
    p.add_argument("--token-noise", type=float, default=0.15, help="fraction of text tokens replaced at random (augmentation)")
    p.add_argument("--eval-every", type=int, default=270, help="steps between validation + checkpoint")
    p.add_argument("--vocab-size", type=int, default=2000)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--dropout", type=float, default=0.2)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-model", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train the GPT on a labelled CSV")
    add_train_arguments(p)

    p = sub.add_parser("export", help="ONNX with a KV cache + model.json, checked against PyTorch")
    p.add_argument("checkpoint", help="ckpt.pt written by train")
    p.add_argument("--out", required=True, help="directory for model.onnx, model.json, tokenizer.json")
    p.add_argument("--int8", action="store_true", help="also write model.int8.onnx (dynamic quantisation)")
    p.add_argument("--data", help="labelled CSV to measure metrics on (default: the checkpoint's own data file)")
    p.add_argument("--name", default="edgewatch-nanogpt", help="model name in model.json")

    for name, text in (("eval", "accuracy, macro-F1, confusion matrix"), ("generate", "generate text")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--model", help="exported model directory (default: the shipped model)")
        p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
        if name == "eval":
            p.add_argument("--data", required=True, help="labelled CSV (text,label)")
            p.add_argument("--json", action="store_true", help="print one JSON object")
            p.add_argument("--int8", action="store_true", help="evaluate model.int8.onnx")
        else:
            p.add_argument("prompt")
            p.add_argument("--max-tokens", type=int, default=48)
            p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
            p.add_argument("--seed", type=int)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup("info", stream="stderr")  # stdout is for results
    module, func = HANDLERS[args.command].split(":")
    try:
        return getattr(importlib.import_module(module), func)(args)
    except (DataError, FileNotFoundError) as e:
        print(f"edge-model {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - one clear line, exit 1
        print(f"edge-model {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
