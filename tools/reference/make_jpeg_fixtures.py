#!/usr/bin/env python3
"""Reference fixtures for idefics-processor's JPEG decoder (a port of libjpeg-turbo as Pillow drives it).

Run with the project venv (transformers 5.24.0, Pillow 12.3.0 with libjpeg-turbo 3.1):
    /work/.venv/bin/python tools/reference/make_jpeg_fixtures.py

Writes tests/fixtures/jpeg/:
  files/*.jpg        JPEGs made by Pillow's encoder (baseline, progressive, restart markers, 4:4:4 / 4:2:2 /
                     4:2:0, grey, CMYK, EXIF orientations 1-8, XMP orientation, odd sizes, optimized tables)
                     and by tools/reference/mini_jpeg.py for what Pillow cannot write (YCCK, Adobe RGB, RGB
                     component ids, 4:4:0, 4:1:1, mixed and 4x sampling, one scan per component, no DHT,
                     restart intervals), plus broken variants (truncated, corrupt entropy data, bad headers)
  expected.safetensors  transformers' `load_image` pixels (PIL open -> exif_transpose -> convert("RGB"))
                     for every file Pillow accepts, uint8 HWC, key = file name
  manifest.json      per file: Pillow's outcome ("ok" + mode/size, or the exception it raised); for two
                     files, every truncation length Pillow accepts; Idefics2 processor digests; versions
"""

import io
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import PIL
import safetensors
import transformers
from PIL import Image, features
from safetensors.numpy import save_file
from transformers.image_utils import load_image
from transformers.models.idefics2.image_processing_pil_idefics2 import Idefics2ImageProcessorPil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mini_jpeg  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "jpeg"
FILES = OUT / "files"


def photo(h, w, seed=0):
    """Smooth gradients, a sharp block and some noise: exercises DC, low and high AC coefficients."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    img = np.stack([255 * xx, 255 * (0.5 + 0.5 * np.sin(6 * yy + 3 * xx + seed)), 255 * yy * (1 - xx)], -1)
    img[: max(1, h // 4), : max(1, w // 5)] = [250, 20, 20]
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def pil_jpeg(arr, mode=None, **kw):
    buf = io.BytesIO()
    im = Image.fromarray(arr)
    if mode:
        im = im.convert(mode)
    im.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def exif_orientation(o):
    ex = Image.Exif()
    ex[0x0112] = o
    return ex.tobytes()


def make_files():
    f = {}
    p = photo(48, 64)
    f["baseline_420.jpg"] = pil_jpeg(p, quality=90)
    f["baseline_422.jpg"] = pil_jpeg(p, quality=90, subsampling=1)
    f["baseline_444.jpg"] = pil_jpeg(p, quality=90, subsampling=0)
    f["baseline_q100.jpg"] = pil_jpeg(p, quality=100, subsampling=0)
    f["baseline_q5.jpg"] = pil_jpeg(p, quality=5)
    f["optimized_420.jpg"] = pil_jpeg(p, quality=80, optimize=True)
    f["progressive_420.jpg"] = pil_jpeg(p, quality=85, progressive=True)
    f["progressive_444.jpg"] = pil_jpeg(p, quality=85, progressive=True, subsampling=0)
    f["progressive_422_optimized.jpg"] = pil_jpeg(p, quality=70, progressive=True, subsampling=1, optimize=True)
    f["restart_blocks_420.jpg"] = pil_jpeg(p, quality=90, restart_marker_blocks=3)
    f["restart_rows_444.jpg"] = pil_jpeg(p, quality=90, subsampling=0, restart_marker_rows=1)
    f["restart_progressive.jpg"] = pil_jpeg(p, quality=90, progressive=True, restart_marker_blocks=2)
    f["gray.jpg"] = pil_jpeg(p, "L", quality=90)
    f["gray_progressive.jpg"] = pil_jpeg(p, "L", quality=90, progressive=True)
    f["cmyk.jpg"] = pil_jpeg(p, "CMYK", quality=92)
    f["cmyk_progressive.jpg"] = pil_jpeg(p, "CMYK", quality=92, progressive=True)
    small = photo(9, 17, 4)
    for o in range(1, 9):
        f[f"exif_orientation_{o}_17x9.jpg"] = pil_jpeg(small, quality=95, exif=exif_orientation(o))
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    f["xmp_orientation_6.jpg"] = pil_jpeg(small, quality=95, xmp=xmp)
    for (h, w) in [(9, 17), (65, 33), (1, 1), (2, 2), (5, 3), (1, 9), (17, 1), (15, 15), (31, 47)]:
        a = photo(h, w, h * 100 + w)
        for ss in (0, 1, 2):
            f[f"odd_{w}x{h}_ss{ss}.jpg"] = pil_jpeg(a, quality=88, subsampling=ss)
        f[f"odd_{w}x{h}_progressive.jpg"] = pil_jpeg(a, quality=88, progressive=True)
    f["large_257x190.jpg"] = pil_jpeg(photo(190, 257, 9), quality=85)
    f["large_257x190_progressive_444.jpg"] = pil_jpeg(photo(190, 257, 10), quality=85, progressive=True, subsampling=0)

    # mini_jpeg layouts.
    q = photo(37, 45, 11)
    yc = np.array(Image.fromarray(q).convert("YCbCr"))
    planes = [yc[..., i] for i in range(3)]
    k = (np.arange(37 * 45).reshape(37, 45) * 7 % 256).astype(np.uint8)
    enc = mini_jpeg.encode
    f["mini_ycck_444.jpg"] = enc(planes + [k], [(1, 1)] * 4, adobe=2)
    f["mini_ycck_420.jpg"] = enc(planes + [k], [(2, 2), (1, 1), (1, 1), (2, 2)], adobe=2)
    f["mini_cmyk_no_adobe.jpg"] = enc([q[..., 0], q[..., 1], q[..., 2], k], [(1, 1)] * 4)
    f["mini_rgb_adobe0.jpg"] = enc([q[..., i] for i in range(3)], [(1, 1)] * 3, adobe=0)
    f["mini_rgb_ids.jpg"] = enc([q[..., i] for i in range(3)], [(1, 1)] * 3, ids=[82, 71, 66])
    f["mini_ycc_ids_no_markers.jpg"] = enc(planes, [(2, 2), (1, 1), (1, 1)])
    f["mini_ycc_jfif_and_adobe0.jpg"] = enc(planes, [(2, 1), (1, 1), (1, 1)], jfif=True, adobe=0)
    f["mini_440.jpg"] = enc(planes, [(1, 2), (1, 1), (1, 1)], jfif=True)
    f["mini_411.jpg"] = enc(planes, [(4, 1), (1, 1), (1, 1)], jfif=True)
    f["mini_mixed_2x2_2x1_1x2.jpg"] = enc(planes, [(2, 2), (2, 1), (1, 2)], jfif=True)
    f["mini_1x4_int.jpg"] = enc(planes, [(1, 4), (1, 1), (1, 2)], jfif=True)
    f["mini_too_many_blocks.jpg"] = enc(planes, [(4, 2), (1, 1), (2, 1)], jfif=True)
    f["mini_3x1_fractional.jpg"] = enc(planes, [(3, 1), (2, 1), (1, 1)], jfif=True)
    f["mini_scan_per_component.jpg"] = enc(planes, [(2, 2), (1, 1), (1, 1)], jfif=True, scans="separate")
    f["mini_no_dht.jpg"] = enc(planes, [(2, 2), (1, 1), (1, 1)], jfif=True, write_dht=False)
    f["mini_restart_5.jpg"] = enc(planes, [(2, 1), (1, 1), (1, 1)], jfif=True, restart=5)
    f["mini_gray_2x2.jpg"] = enc([planes[0]], [(2, 2)])
    f["mini_q1_extreme.jpg"] = enc(planes, [(1, 1)] * 3, quality_scale=0.01, jfif=True)

    # Broken files: Pillow decides what is accepted.
    base, prog = f["baseline_420.jpg"], f["progressive_420.jpg"]
    for name, data in [("baseline", base), ("progressive", prog)]:
        f[f"broken_{name}_half.jpg"] = data[: len(data) // 2]
        f[f"broken_{name}_no_eoi.jpg"] = data[:-2]
        f[f"broken_{name}_no_eoi_zeros.jpg"] = data[:-2] + b"\x00" * 64
        f[f"broken_{name}_cut_then_eoi.jpg"] = data[: len(data) * 3 // 4] + b"\xff\xd9"
        f[f"broken_{name}_trailing_junk.jpg"] = data + b"junk after the end" * 4
    sos = base.find(b"\xff\xda")
    rng = np.random.default_rng(1234)
    for i in range(24):
        b = bytearray(base)
        for _ in range(1 + i % 4):
            pos = int(rng.integers(sos + 14, len(b) - 2))
            b[pos] ^= 1 << int(rng.integers(0, 8))
        f[f"broken_flipped_bits_{i:02}.jpg"] = bytes(b)
    rs = f["restart_blocks_420.jpg"]
    r0 = rs.find(b"\xff\xd1")
    f["broken_restart_marker_renumbered.jpg"] = rs[:r0] + b"\xff\xd5" + rs[r0 + 2:]
    r3 = rs.find(b"\xff\xd3")
    f["broken_restart_segment_dropped.jpg"] = rs[:r0] + rs[r3:]
    app0_end = 4 + struct.unpack(">H", base[4:6])[0]
    f["broken_garbage_between_markers.jpg"] = base[:app0_end] + b"\x12\x34" + base[app0_end:]
    dht = base.find(b"\xff\xc4")
    f["broken_bad_huffman_table.jpg"] = base[:dht + 5] + bytes([255]) + base[dht + 6:]
    sof = base.find(b"\xff\xc0")
    f["broken_12bit.jpg"] = base[:sof + 4] + b"\x0c" + base[sof + 5:]
    f["broken_zero_width.jpg"] = base[:sof + 7] + b"\x00\x00" + base[sof + 9:]
    f["broken_sampling_5.jpg"] = base[:sof + 11] + b"\x51" + base[sof + 12:]
    f["broken_bad_quant_index.jpg"] = base[:sof + 12] + b"\x03" + base[sof + 13:]
    f["broken_no_sof.jpg"] = base[:sof] + base[sof + 2 + struct.unpack(">H", base[sof + 2:sof + 4])[0]:]
    f["broken_sos_bad_component.jpg"] = base[:sos + 5] + b"\x09" + base[sos + 6:]
    psos = prog.find(b"\xff\xda")
    f["broken_progressive_bad_band.jpg"] = prog[:psos + 11] + b"\x05" + prog[psos + 12:]
    return f


def digest(arr):
    data = np.ascontiguousarray(arr)
    return f"{zlib.crc32(data.tobytes()) & 0xFFFFFFFF:08x}:{int(data.astype(np.uint64).sum())}"


def pillow_outcome(path):
    try:
        arr = np.array(load_image(str(path)))
    except Exception as e:  # noqa: BLE001 - record how the reference fails
        return None, {"error": f"{type(e).__name__}: {e}"[:200]}
    with Image.open(path) as im:
        mode = im.mode
    return arr, {"height": arr.shape[0], "width": arr.shape[1], "pil_mode": mode}


def truncation_sweep(data):
    """Every length (from the first SOS on) at which Pillow decodes the truncated file."""
    accepted = []
    for n in range(data.find(b"\xff\xda"), len(data) + 1):
        try:
            im = Image.open(io.BytesIO(data[:n]))
            im.load()
            accepted.append(n)
        except Exception:  # noqa: BLE001
            pass
    return accepted


CONFIG = dict(do_convert_rgb=True, do_image_splitting=True, do_normalize=True, do_pad=True, do_rescale=True,
              do_resize=True, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], resample=2,
              rescale_factor=0.00392156862745098, size={"longest_edge": 98, "shortest_edge": 37})


def processor_cases():
    """Idefics2 `pixel_values` (float32 bytes) and mask of a few JPEGs, as digests."""
    cases = []
    for names, split in [(["baseline_420.jpg", "cmyk.jpg", "exif_orientation_6_17x9.jpg"], True),
                         (["progressive_420.jpg", "mini_ycck_420.jpg", "large_257x190.jpg"], False),
                         (["gray.jpg", "odd_33x65_ss2.jpg", "xmp_orientation_6.jpg"], True)]:
        proc = Idefics2ImageProcessorPil(**CONFIG)
        out = proc([[load_image(str(FILES / n)) for n in names]], return_tensors="np", do_image_splitting=split)
        pv, mask = out["pixel_values"], out["pixel_attention_mask"]
        assert pv.dtype == np.float32
        cases.append({"files": names, "do_image_splitting": split, "shape": list(pv.shape),
                      "pixel_values": digest(pv.view(np.uint8)), "mask": digest(mask.astype(np.uint8))})
    return cases


def main():
    FILES.mkdir(parents=True, exist_ok=True)
    for old in FILES.glob("*.jpg"):
        old.unlink()
    files = make_files()
    tensors, meta = {}, {}
    for name, data in sorted(files.items()):
        (FILES / name).write_bytes(data)
        arr, info = pillow_outcome(FILES / name)
        if arr is not None:
            if arr.nbytes <= 20_000:
                tensors[name] = np.ascontiguousarray(arr)
            else:
                info["digest"] = digest(arr)
        meta[name] = info
    versions = {"transformers": transformers.__version__, "pillow": PIL.__version__,
                "libjpeg_turbo": features.version("libjpeg_turbo"), "numpy": np.__version__,
                "safetensors": safetensors.__version__}
    save_file(tensors, str(OUT / "expected.safetensors"), metadata={"versions": json.dumps(versions)})
    manifest = {
        "versions": versions,
        "files": meta,
        "truncation": {n: truncation_sweep(files[n]) for n in ["baseline_420.jpg", "progressive_420.jpg",
                                                                  "restart_blocks_420.jpg"]},
        "processor": {"config": CONFIG, "cases": processor_cases()},
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (OUT / "VERSIONS.json").write_text(json.dumps(versions, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    ok = sum(1 for m in meta.values() if "error" not in m)
    print(f"{len(meta)} files, {ok} decoded by Pillow; fixtures {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
