"""``python -m fedhe_client.transfer.pretrained --rebuild``: reproduce the shipped weights."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fedhe_client.transfer.pretrained import WEIGHTS


def main(argv: list[str] | None = None) -> int:
    """Rebuild the weights file (or say where it is)."""
    parser = argparse.ArgumentParser(prog="python -m fedhe_client.transfer.pretrained")
    parser.add_argument("--rebuild", action="store_true", help="pre-train and write the weights")
    parser.add_argument("--out", type=Path, default=WEIGHTS, help="where to write them")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.rebuild:
        print(f"weights: {WEIGHTS} ({'present' if WEIGHTS.is_file() else 'missing'})")
        return 0
    from fedhe_client.transfer.pretrained.train import rebuild

    start = time.process_time()
    path = rebuild(args.out, args.seed)
    cpu = time.process_time() - start
    print(f"wrote {path} ({path.stat().st_size} bytes, {cpu:.1f} CPU-s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
