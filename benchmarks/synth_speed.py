"""How fast `promptdet data synth` makes training data on this machine.

Prints the median wall time over repeats for N scenes (rendering, JPEG writing and instructions),
the scenes per second, and the median time of one render_scene call on one core.

    python benchmarks/synth_speed.py --num 200 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np

from promptdet.data.synth.generate import synthesize
from promptdet.data.synth.render import render_scene


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0, help="0 = one per core")
    ap.add_argument("--size", default="640x480")
    args = ap.parse_args()
    size_wh = tuple(int(v) for v in args.size.split("x"))

    walls = []
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            synthesize(tmp, args.num, seed=r, size_wh=size_wh, workers=args.workers, progress=False)
            walls.append(time.perf_counter() - t0)
    wall = statistics.median(walls)

    rng = np.random.default_rng(0)
    render_scene(rng, size_wh)  # warm-up
    one = []
    for _ in range(50):
        t0 = time.perf_counter()
        render_scene(rng, size_wh)
        one.append(time.perf_counter() - t0)

    print(f"synth {args.num} scenes at {args.size}: median {wall:.2f} s over {args.repeats} runs "
          f"({args.num / wall:.1f} scenes/s; target < 20 s for 200)")
    print(f"render_scene, one core: median {1000 * statistics.median(one):.1f} ms")


if __name__ == "__main__":
    main()
