#!/usr/bin/env python3
"""Makes the JPEG decode benchmark files and times Pillow on them (the reference for examples/jpeg_bench.rs).

    /work/.venv/bin/python tools/reference/jpeg_bench_pillow.py /tmp/jpeg_bench
    target/debug/examples/jpeg_bench /tmp/jpeg_bench/*.jpg

Files: synthetic photos (gradients, texture, noise) of 1024x768 and 4032x3024, saved by Pillow as q85 4:2:0,
q85 progressive and q95 4:4:4. Timing: best of 20 (1024x768) or 5 (4032x3024) `Image.open` + `load`.
"""

import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, features


def photo(h, w, rng):
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    img = np.stack([255 * xx, 255 * (0.5 + 0.5 * np.sin(12 * yy + 7 * xx)), 255 * yy * (1 - xx)], -1)
    img += rng.normal(0, 10, (h, w, 3))
    img += 30 * np.sin(xx * 200)[..., None] * np.cos(yy * 150)[..., None]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/jpeg_bench")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for w, h in [(1024, 768), (4032, 3024)]:
        if (out / f"bench_{w}x{h}_q95_444.jpg").exists():
            continue
        p = photo(h, w, rng)
        p.save(out / f"bench_{w}x{h}_q85_420.jpg", quality=85)
        p.save(out / f"bench_{w}x{h}_q85_progressive.jpg", quality=85, progressive=True)
        p.save(out / f"bench_{w}x{h}_q95_444.jpg", quality=95, subsampling=0)
    for f in sorted(out.glob("bench_*.jpg")):
        data = f.read_bytes()
        n = 5 if "4032" in f.name else 20
        best = float("inf")
        for _ in range(n):
            t = time.perf_counter()
            Image.open(io.BytesIO(data)).load()
            best = min(best, time.perf_counter() - t)
        print(f"{f.name}: Pillow {Image.__version__} (libjpeg-turbo {features.version('libjpeg_turbo')}) {best * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
