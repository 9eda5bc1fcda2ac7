#!/usr/bin/env python3
"""pycocotools on the same file as `spr bench load`, for the side-by-side
figures: load + index (`COCO(file)`), then the object-rich filter SPR uses
(images with at least 9 non-crowd objects of area >= 300), timed, and the
process's peak RSS.

    spr bench load --images 1700000 --keep /tmp/o365-train.json
    python scripts/bench/load_pycocotools.py /tmp/o365-train.json

Run it under a memory cap (e.g. `prlimit --as=$((20 << 30))`) on a machine
where running out of memory would hurt: it then ends with MemoryError
instead of the kernel's OOM killer.
"""
import resource
import sys
import time

from pycocotools.coco import COCO


def main() -> None:
    path = sys.argv[1]
    start = time.perf_counter()
    try:
        coco = COCO(path)
    except MemoryError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"pycocotools: MemoryError after {time.perf_counter() - start:.1f} s, "
              f"peak RSS {peak:.0f} MB")
        sys.exit(1)
    load_s = time.perf_counter() - start
    t = time.perf_counter()
    rich = 0
    for img_id, anns in coco.imgToAnns.items():
        n = sum(1 for a in anns if not a.get("iscrowd", 0) and a.get("area", 0) >= 300)
        rich += n >= 9
    filter_s = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"pycocotools: {len(coco.imgs)} images, {len(coco.anns)} objects, "
          f"{rich} object-rich images")
    print(f"time: load+index {load_s:.2f} s, object-rich filter {filter_s:.2f} s, "
          f"total {load_s + filter_s:.2f} s; peak RSS {peak:.0f} MB")


if __name__ == "__main__":
    main()
