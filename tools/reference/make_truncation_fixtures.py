#!/usr/bin/env python3
"""Which truncations of the PNG / GIF / WebP / BMP fixture files Pillow decodes (LOAD_TRUNCATED_IMAGES off).

Run with the project venv (Pillow 12.3.0, transformers 5.24.0):
    /work/.venv/bin/python tools/reference/make_truncation_fixtures.py

Writes tests/fixtures/truncation/manifest.json: for each file of tests/fixtures/images/files listed below,
the lengths n for which transformers' `load_image` accepts the first n bytes, as [start, end] ranges.
(JPEG truncations are in tests/fixtures/jpeg/manifest.json.)
"""

import io
import json
from pathlib import Path

import PIL
import transformers
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[2]
FILES = ROOT / "tests" / "fixtures" / "images" / "files"
OUT = ROOT / "tests" / "fixtures" / "truncation"
NAMES = ["png_rgb.png", "png_palette.png", "png_interlaced.png", "png_l16.png", "gif_single.gif",
         "gif_animated.gif", "gif_transparent.gif", "webp_lossless_rgb.webp", "webp_lossless_rgba.webp",
         "webp_lossy.webp", "webp_exif_orientation_8.webp", "webp_animated.webp", "bmp_rgb.bmp",
         "bmp_palette.bmp", "bmp_l.bmp"]


def accepts(data):
    # transformers' load_image on bytes: PIL open, exif_transpose, convert("RGB").
    try:
        im = Image.open(io.BytesIO(data))
        im = ImageOps.exif_transpose(im)
        im.convert("RGB")
        return True
    except Exception:  # noqa: BLE001
        return False


def ranges(ns):
    out = []
    for n in ns:
        if out and out[-1][1] == n - 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return out


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in NAMES:
        data = (FILES / name).read_bytes()
        files[name] = {"length": len(data), "accepted": ranges([n for n in range(len(data) + 1) if accepts(data[:n])])}
        print(name, files[name])
    versions = {"pillow": PIL.__version__, "transformers": transformers.__version__}
    (OUT / "manifest.json").write_text(json.dumps({"versions": versions, "files": files}, indent=1) + "\n")


if __name__ == "__main__":
    main()
