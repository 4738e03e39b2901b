"""The ``lora-bridge`` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import LoraBridgeError


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), steps=args.steps, size=args.size, strength=args.strength)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-bridge", description="Fetch, cache and apply LoRAs on ComfyUI pods.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="render one prompt with and without a LoRA on a local CPU ComfyUI")
    demo.add_argument("--out", default="out/demo", help="folder for the two PNGs (default: out/demo)")
    demo.add_argument("--steps", type=int, default=4, help="sampling steps (default: 4)")
    demo.add_argument("--size", type=int, default=64, help="image width and height in pixels (default: 64)")
    demo.add_argument("--strength", type=float, default=1.0, help="LoRA strength for model and CLIP (default: 1.0)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LoraBridgeError as exc:
        print(f"lora-bridge: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
