"""Cost of the content fingerprint (SHA-256 over every decoded pixel) on the real data sets.

``ImageSet.fingerprint`` keys cached features and manifests on the pixels themselves (two folders
with the same names but other images never share a key). This measures what that costs against
the load it follows: for each set, the load from a warm decoded-image cache (memory-mapped, so the
pixels are read by the first pass over them: here, the hash), then the fingerprint, in wall
seconds and in CPU seconds of this process (what the hash costs, whatever else runs on the
machine); best of ``--repeat`` each. Usage (from the project root)::

    python benchmarks/fingerprint_cost.py [--data ../shared/data] [--cache-dir DIR] [--repeat 3]

The first run decodes the miniImageNet base split into ``--cache-dir`` (minutes); later runs read it.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

from episodes.specs import load_data


def measure(spec: str, split: str | None, cache_dir: str, repeat: int) -> dict:
    load_data(spec, split, cache_dir=cache_dir)  # decode once (a warm cache from here on)
    load = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        data = load_data(spec, split, cache_dir=cache_dir)
        load = min(load, time.perf_counter() - t0)
    best = cpu = float("inf")
    for _ in range(repeat):
        data._fingerprint = None
        t0, c0 = time.perf_counter(), time.process_time()
        fp = data.fingerprint
        best, cpu = min(best, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    nbytes = data.images.numel()
    return {"set": data.describe(), "bytes": nbytes, "load_s": load, "fingerprint_s": best,
            "cpu_s": cpu, "gb_per_cpu_s": nbytes / cpu / 1e9, "fingerprint": fp}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--cache-dir", default="/tmp/fewshot-fingerprint-bench")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    root = Path(args.data)
    sets = [(f"miniimagenet:{root / 'miniimagenet'}", "base"),
            (f"omniglot:{root / 'omniglot' / 'images_background_small1.zip'}", None),
            (f"omniglot:{root / 'omniglot' / 'images_background_small2.zip'}", None)]
    print(f"{'set':90s} {'MB':>7s} {'load s':>7s} {'hash s':>7s} {'hash CPU s':>10s} {'GB/CPU s':>8s}"
          f"  (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    for spec, split in sets:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the val/novel-less miniImageNet copy warns it is not standard
            r = measure(spec, split, args.cache_dir, args.repeat)
        print(f"{r['set']:90s} {r['bytes'] / 1e6:7.1f} {r['load_s']:7.2f} {r['fingerprint_s']:7.3f} "
              f"{r['cpu_s']:10.3f} {r['gb_per_cpu_s']:8.2f}")


if __name__ == "__main__":
    main()
