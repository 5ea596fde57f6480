"""How long ``Fleet(hosts)`` takes to build (no connections are opened) for large host lists.

The duplicate-name check used ``list.count`` per name, O(n^2): 1.7 s at 10,000 hosts. It is one
``Counter`` pass now, so building stays in the milliseconds.

    python bench/fleet_init.py [--sizes 1000,10000,50000] [--repeat 3]

Prints a table of median seconds. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedctl.fleet import Fleet  # noqa: E402
from fedctl.model import HostInfo  # noqa: E402


def main() -> None:
    """Time Fleet construction at each size and print one line per size."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,50000")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"{'hosts':>8}  {'median s':>9}")
    for n in (int(x) for x in args.sizes.split(",")):
        hosts = [HostInfo(f"h{i:06d}", "127.0.0.1") for i in range(n)]
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            Fleet(hosts)
            times.append(time.perf_counter() - t0)
        print(f"{n:>8}  {statistics.median(times):>9.4f}")


if __name__ == "__main__":
    main()
