"""How much ``import fedmtl`` costs next to ``import torch`` (issue 19: at most 1.3x).

Also the cost with ``fedmtl.Experiment`` loaded (the whole simulation: PyTorch, the config models,
every algorithm). Each runs in a fresh interpreter ``--repeats`` times; the best time of each is
compared (the best is the least disturbed by other load on the machine).

    python scripts/import_cost.py --repeats 7
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time


def best_time(code: str, repeats: int) -> float:
    """The fastest of ``repeats`` wall times of ``python -c code``."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    base = best_time("import sys", args.repeats)  # the interpreter's own start-up, subtracted from all
    torch_s = best_time("import torch", args.repeats) - base
    fedmtl_s = best_time("import fedmtl", args.repeats) - base
    full_s = best_time("import fedmtl; fedmtl.Experiment", args.repeats) - base
    print(f"import torch {torch_s:.2f} s; import fedmtl {fedmtl_s:.2f} s (ratio {fedmtl_s / torch_s:.2f}); "
          f"with fedmtl.Experiment loaded {full_s:.2f} s (ratio {full_s / torch_s:.2f})")


if __name__ == "__main__":
    main()
