#!/usr/bin/env python3
"""Reference fixtures for idefics-processor's image pipeline (decode, Pillow resize, Idefics2 image processor).

Run with the project venv (transformers 5.24.0, Pillow 12.3.0):
    /work/.venv/bin/python tools/reference/make_image_fixtures.py

Writes tests/fixtures/images/:
  files/*                 small test images in many formats / modes / EXIF orientations (the decode inputs)
  decode.safetensors      for each file, the RGB uint8 pixels transformers' `load_image` produces
                          (PIL open -> ImageOps.exif_transpose -> convert("RGB")), key = file name
  resize.safetensors      Pillow `Image.resize` outputs of pseudo-random RGB sources for many (in, out) size
                          pairs and the BILINEAR / BICUBIC / LANCZOS / NEAREST / BOX / HAMMING filters
  processor.safetensors   Idefics2ImageProcessorPil outputs (as Idefics2Processor calls it: load_image first)
                          with rescale/normalize switched off, i.e. the uint8 resized frames, plus the
                          normalize look-up tables taken from transformers' own float32 outputs
  manifest.json           the case list, shapes, mask extents, digests of large frames, library versions

Synthetic processor inputs are generated from an integer hash (`synthetic_rgb`) that the Rust tests
re-implement, so large inputs cost no disk space; large expected frames are stored as digests (CRC-32 + byte sum).
"""

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import PIL
import safetensors
import transformers
from PIL import Image, ImageOps
from safetensors.numpy import save_file
from transformers.image_utils import load_image
from transformers.models.idefics2.image_processing_pil_idefics2 import Idefics2ImageProcessorPil

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "images"
FILES = OUT / "files"

# Frames with more bytes than this are stored as digests instead of pixels.
FULL_FRAME_LIMIT = 40_000

IDEFICS2_8B = dict(  # HuggingFaceM4/idefics2-8b preprocessor_config.json
    do_convert_rgb=True,
    do_image_splitting=True,
    do_normalize=True,
    do_pad=True,
    do_rescale=True,
    do_resize=True,
    image_mean=[0.5, 0.5, 0.5],
    image_std=[0.5, 0.5, 0.5],
    resample=2,
    rescale_factor=0.00392156862745098,
    size={"longest_edge": 980, "shortest_edge": 378},
)


def hash_u8(h, w, c, seed):
    """Pseudo-random bytes from an integer hash of (y, x, c, seed); mirrored by the Rust tests."""
    y, x, ch = np.meshgrid(np.arange(h, dtype=np.uint64), np.arange(w, dtype=np.uint64),
                           np.arange(c, dtype=np.uint64), indexing="ij")
    m = np.uint64(0xFFFFFFFF)
    v = (x * np.uint64(73856093)) ^ (y * np.uint64(19349663)) ^ (ch * np.uint64(83492791))
    v = (v ^ (np.uint64(seed) * np.uint64(2654435761))) & m
    v ^= v >> np.uint64(13)
    v = (v * np.uint64(0x5BD1E995)) & m
    v ^= v >> np.uint64(15)
    return (v & np.uint64(0xFF)).astype(np.uint8)


def synthetic_rgb(h, w, seed):
    """Noise with some low-frequency structure (so splitting / resizing see edges and gradients)."""
    noise = hash_u8(h, w, 3, seed).astype(np.uint32)
    yy, xx = np.meshgrid(np.arange(h, dtype=np.uint32), np.arange(w, dtype=np.uint32), indexing="ij")
    ramp = ((xx * 255) // max(w, 1) + (yy * 255) // max(h, 1)) // 2
    return ((noise[..., :] // 4 + ramp[..., None] * 3 // 4) % 256).astype(np.uint8)


def digest(arr):
    """CRC-32 (zlib) of the HWC bytes and their sum: a compact stand-in for a large expected frame."""
    data = np.ascontiguousarray(arr)
    return f"{zlib.crc32(data.tobytes()) & 0xFFFFFFFF:08x}:{int(data.astype(np.uint64).sum())}"


def png_bytes(arr, colortype, depth, interlace=0, extra_chunks=()):
    """Minimal PNG writer (Pillow cannot write 16-bit RGB/LA/RGBA PNGs)."""
    h, w = arr.shape[:2]
    a = arr.astype(">u2" if depth == 16 else "u1")
    if interlace:  # Adam7: seven sub-images, each filtered row by row
        passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
        raw = b""
        for x0, y0, dx, dy in passes:
            sub = a[y0::dy, x0::dx]
            if sub.size:
                raw += b"".join(b"\x00" + row.tobytes() for row in sub)
    else:
        raw = b"".join(b"\x00" + a[y].tobytes() for y in range(h))

    def chunk(t, d):
        c = struct.pack(">I", len(d)) + t + d
        return c + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colortype, 0, 0, interlace))
    for t, d in extra_chunks:
        out += chunk(t, d)
    return out + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def exif_with_orientation(o):
    ex = Image.Exif()
    ex[0x0112] = o
    return ex.tobytes()


def photo(h, w, seed=0):
    """A smooth, asymmetric 'photo' (compresses well, shows flips and rotations)."""
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    r = 255 * xx
    g = 255 * (0.5 + 0.5 * np.sin(6 * yy + 3 * xx + seed))
    b = 255 * yy * (1 - xx)
    img = np.stack([r, g, b], -1)
    img[: max(1, h // 4), : max(1, w // 5)] = [250, 20, 20]  # red block in the top-left corner
    return np.clip(img, 0, 255).astype(np.uint8)


def make_files():
    FILES.mkdir(parents=True, exist_ok=True)
    files = {}

    def save_pil(name, im, **kw):
        buf = io.BytesIO()
        im.save(buf, **kw)
        files[name] = buf.getvalue()

    rgb = Image.fromarray(photo(48, 64))
    save_pil("jpeg_baseline_420.jpg", rgb, format="JPEG", quality=90)
    save_pil("jpeg_baseline_444.jpg", rgb, format="JPEG", quality=90, subsampling=0)
    save_pil("jpeg_progressive.jpg", rgb, format="JPEG", quality=85, progressive=True)
    save_pil("jpeg_gray.jpg", rgb.convert("L"), format="JPEG", quality=90)
    save_pil("jpeg_cmyk.jpg", rgb.convert("CMYK"), format="JPEG", quality=95)
    save_pil("jpeg_odd_37x23.jpg", Image.fromarray(photo(23, 37, 1)), format="JPEG", quality=90)
    small = Image.fromarray(photo(16, 24, 2))
    for o in range(1, 9):
        save_pil(f"jpeg_exif_orientation_{o}.jpg", small, format="JPEG", quality=95, exif=exif_with_orientation(o))
    # Large-ish photo for an end-to-end processor case (700 x 1000, smooth so it stays small on disk; PNG so
    # that decoding is exact: JPEG decoders differ, see decode tests).
    save_pil("png_photo_700x1000.png", Image.fromarray(photo(700, 1000, 3)), format="PNG", optimize=True)

    noise = synthetic_rgb(31, 45, 7)
    alpha = hash_u8(31, 45, 1, 8)[..., 0]
    save_pil("png_rgb.png", Image.fromarray(noise), format="PNG")
    save_pil("png_rgba.png", Image.fromarray(np.dstack([noise, alpha]), "RGBA"), format="PNG")
    save_pil("png_rgba_transparent.png", Image.fromarray(np.dstack([noise, alpha * 0]), "RGBA"), format="PNG")
    save_pil("png_l.png", Image.fromarray(noise[..., 0]), format="PNG")
    save_pil("png_la.png", Image.fromarray(np.dstack([noise[..., 0], alpha]), "LA"), format="PNG")
    pal = Image.fromarray(noise).quantize(colors=37)
    save_pil("png_palette.png", pal, format="PNG")
    # One transparent colour: Pillow keeps it in info["transparency"] after convert("RGB"), and the image
    # processor's convert_to_rgb turns every pixel of that colour white.
    save_pil("png_palette_trns.png", pal, format="PNG", transparency=3)
    save_pil("png_l_trns.png", Image.fromarray(noise[..., 0] // 16 * 16), format="PNG", transparency=48)
    save_pil("png_rgb_trns.png", Image.fromarray(noise // 64 * 64), format="PNG", transparency=(64, 128, 0))
    save_pil("png_1bit.png", Image.fromarray(noise[..., 0] > 128), format="PNG")
    files["png_interlaced.png"] = png_bytes(noise, 2, 8, interlace=1)
    n16 = (hash_u8(31, 45, 4, 9).astype(np.uint16) << 8) | hash_u8(31, 45, 4, 10).astype(np.uint16)
    n16[0, :8, 0] = [0, 1, 255, 256, 1000, 32768, 65280, 65535]
    files["png_l16.png"] = png_bytes(n16[..., 0], 0, 16)
    files["png_l16_dark.png"] = png_bytes(n16[..., 0] % 300, 0, 16)  # values around 255 (PIL clips I;16)
    files["png_la16.png"] = png_bytes(n16[..., :2], 4, 16)
    files["png_rgb16.png"] = png_bytes(n16[..., :3], 2, 16)
    files["png_rgba16.png"] = png_bytes(n16, 6, 16)
    files["png_exif_orientation_6.png"] = png_bytes(noise, 2, 8, extra_chunks=[(b"eXIf", exif_with_orientation(6)[6:])])
    save_pil("png_1x1.png", Image.fromarray(noise[:1, :1]), format="PNG")
    save_pil("png_2x2.png", Image.fromarray(noise[:2, :2]), format="PNG")
    save_pil("png_3x3.png", Image.fromarray(noise[:3, :3]), format="PNG")
    save_pil("png_plain_200x8000.png", Image.new("RGB", (8000, 200), (30, 140, 220)), format="PNG")
    save_pil("png_plain_6000x200.png", Image.new("RGB", (200, 6000), (200, 90, 10)), format="PNG")

    frames = [Image.fromarray(noise).quantize(colors=50), Image.fromarray(255 - noise).quantize(colors=50)]
    save_pil("gif_animated.gif", frames[0], format="GIF", save_all=True, append_images=frames[1:], duration=100)
    save_pil("gif_single.gif", frames[0], format="GIF")
    save_pil("gif_transparent.gif", frames[0], format="GIF", transparency=5)

    save_pil("webp_lossless_rgb.webp", Image.fromarray(noise), format="WEBP", lossless=True)
    save_pil("webp_lossless_rgba.webp", Image.fromarray(np.dstack([noise, alpha]), "RGBA"), format="WEBP", lossless=True)
    save_pil("webp_lossy.webp", rgb, format="WEBP", quality=80)
    save_pil("webp_exif_orientation_8.webp", Image.fromarray(noise), format="WEBP", lossless=True,
             exif=exif_with_orientation(8))
    save_pil("webp_animated.webp", Image.fromarray(noise), format="WEBP", lossless=True, save_all=True,
             append_images=[Image.fromarray(255 - noise)], duration=100)
    # Malformed EXIF (an APP1 "Exif" segment holding garbage): must be ignored, not fail the decode.
    good = files["jpeg_exif_orientation_1.jpg"]
    app1 = b"Exif\x00\x00" + b"MM\x00\x2a\xff\xff\xff\xf0garbage"
    files["jpeg_bad_exif.jpg"] = good[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + good[2:]

    save_pil("bmp_rgb.bmp", Image.fromarray(noise), format="BMP")
    save_pil("bmp_palette.bmp", pal, format="BMP")
    save_pil("bmp_l.bmp", Image.fromarray(noise[..., 0]), format="BMP")

    # Unsupported formats and broken files (the decoder must name the format / fail cleanly).
    save_pil("tiff_rgb.tiff", Image.fromarray(noise[:4, :4]), format="TIFF")
    files["svg_image.svg"] = b'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"><rect width="4" height="4"/></svg>\n'
    # ISO-BMFF headers only (enough for format sniffing): HEIC and AVIF.
    files["heic_header.heic"] = struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic" + b"\x00" * 16
    files["avif_header.avif"] = struct.pack(">I", 24) + b"ftypavif" + b"\x00\x00\x00\x00" + b"mif1avif" + b"\x00" * 16
    files["wav_riff.wav"] = b"RIFF" + struct.pack("<I", 36) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 8000, 1, 8) + b"data\x00\x00\x00\x00"
    # A PNG whose header claims 100000 x 100000 pixels (a decompression bomb's header; tiny IDAT).
    bomb = png_bytes(np.zeros((1, 1, 3), np.uint8), 2, 8)
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    bomb = bomb[:8] + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF) + bomb[33:]
    files["png_bomb_header.png"] = bomb

    for name, data in files.items():
        (FILES / name).write_bytes(data)
    return files


# Files that transformers' load_image can open (the others are bad inputs for the decoder tests).
def decode_expectations(files):
    tensors, meta = {}, {}
    for name in sorted(files):
        try:
            im = load_image(str(FILES / name))
            arr = np.array(im)
        except Exception as e:  # noqa: BLE001 - record how the reference fails
            meta[name] = {"error": f"{type(e).__name__}: {e}"[:200]}
            continue
        meta[name] = {"height": arr.shape[0], "width": arr.shape[1], "pil_mode": Image.open(FILES / name).mode}
        if arr.nbytes <= 200_000:
            tensors[f"decode/{name}"] = np.ascontiguousarray(arr)
        else:
            meta[name]["digest"] = digest(arr)
    return tensors, meta


RESIZE_PAIRS = [  # (in_h, in_w, out_h, out_w)
    (17, 23, 17, 23), (17, 23, 5, 7), (17, 23, 40, 61), (17, 23, 17, 9), (17, 23, 33, 23),
    (1, 1, 3, 5), (1, 1, 1, 1), (2, 2, 7, 7), (3, 3, 1, 1), (40, 61, 13, 37),
    (40, 61, 39, 60), (40, 61, 41, 62), (64, 48, 32, 24), (64, 48, 21, 16), (50, 3, 100, 9),
    (6, 200, 2, 98), (200, 6, 98, 3), (5, 90, 38, 98), (90, 5, 98, 38), (31, 45, 37, 37),
    (64, 64, 37, 98), (70, 100, 37, 49), (11, 97, 11, 98), (97, 11, 98, 11), (128, 7, 23, 7),
]
FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def resize_expectations():
    tensors, cases = {}, []
    for i, (ih, iw, oh, ow) in enumerate(RESIZE_PAIRS):
        src = synthetic_rgb(ih, iw, 100 + i)
        tensors[f"src/{i}"] = src
        for fname, fid in FILTERS.items():
            out = np.array(Image.fromarray(src).resize((ow, oh), resample=fid))
            tensors[f"out/{i}/{fname}"] = np.ascontiguousarray(out)
        cases.append({"index": i, "in": [ih, iw], "out": [oh, ow]})
    # Pipeline-sized pairs: only digests are stored (source regenerated from the hash in Rust).
    big = []
    for i, (ih, iw, oh, ow, fname) in enumerate([
        (700, 1000, 686, 980, "bilinear"), (250, 1000, 378, 980, "bilinear"), (200, 2000, 378, 980, "bilinear"),
        (981, 981, 980, 980, "bilinear"), (480, 640, 1536, 2048, "lanczos"), (1536, 2048, 512, 512, "lanczos"),
        (1000, 300, 2048, 614, "lanczos"), (300, 700, 450, 1000, "bicubic"),
    ]):
        seed = 500 + i
        out = np.array(Image.fromarray(synthetic_rgb(ih, iw, seed)).resize((ow, oh), resample=FILTERS[fname]))
        big.append({"in": [ih, iw], "out": [oh, ow], "filter": fname, "seed": seed, "digest": digest(out)})
    return tensors, cases, big


def processor_run(samples, config, **call_kwargs):
    """The Idefics2Processor image path: load_image on every image, then the PIL image processor."""
    proc = Idefics2ImageProcessorPil(**config)
    loaded = [[load_image(im) for im in sample] for sample in samples]
    out = proc(loaded, return_tensors="np", **call_kwargs)
    return out["pixel_values"], out["pixel_attention_mask"]


def pil_from(spec):
    """A processor input: a committed file or a synthetic hash image (kind, h, w, seed)."""
    if spec["kind"] == "file":
        return str(FILES / spec["name"])
    return Image.fromarray(synthetic_rgb(spec["h"], spec["w"], spec["seed"]))


def syn(h, w, seed):
    return {"kind": "synthetic", "h": h, "w": w, "seed": seed}


def file_(name):
    return {"kind": "file", "name": name}


SMALL = dict(IDEFICS2_8B, size={"longest_edge": 98, "shortest_edge": 37})


def processor_cases():
    cases = []
    idx = 0

    def add(name, samples, config, config_name, splitting):
        nonlocal idx
        cases.append(dict(name=name, samples=samples, config=config, config_name=config_name,
                          do_image_splitting=splitting, index=idx))
        idx += 1

    for split in (True, False):
        s = "split" if split else "nosplit"
        add(f"8b_700x1000_{s}", [[syn(700, 1000, 1)]], IDEFICS2_8B, "idefics2-8b", split)
        add(f"8b_981x981_{s}", [[syn(981, 981, 2)]], IDEFICS2_8B, "idefics2-8b", split)
        add(f"8b_odd_447x449_{s}", [[syn(447, 449, 3)]], IDEFICS2_8B, "idefics2-8b", split)
        add(f"8b_tiny_{s}", [[syn(2, 2, 5)], [syn(10, 10, 6), syn(3, 3, 4)]], IDEFICS2_8B, "idefics2-8b", split)
        # 1-pixel-wide images: transformers divides by zero when splitting (a crop is 0 pixels high/wide).
        add(f"8b_1x1_{s}", [[syn(1, 1, 4)]], IDEFICS2_8B, "idefics2-8b", split)
        add(f"8b_1x50_{s}", [[syn(1, 50, 17)]], IDEFICS2_8B, "idefics2-8b", split)
        add(f"8b_extreme_{s}", [[file_("png_plain_200x8000.png"), file_("png_plain_6000x200.png")]],
            IDEFICS2_8B, "idefics2-8b", split)
        add(f"8b_thin_{s}", [[syn(11, 365, 7), syn(512, 14, 8)]], IDEFICS2_8B, "idefics2-8b", split)
        add(f"8b_batch_{s}", [[syn(300, 500, 9), syn(20, 30, 10)], [file_("png_photo_700x1000.png")]],
            IDEFICS2_8B, "idefics2-8b", split)
        add(f"small_batch_{s}", [[syn(70, 100, 11), syn(5, 300, 12)], [syn(99, 98, 13)], [syn(3, 3, 14)]],
            SMALL, "small", split)
        add(f"small_files_{s}", [[file_("png_rgba.png"), file_("png_palette_trns.png"), file_("jpeg_exif_orientation_6.jpg")],
                                 [file_("png_l16.png"), file_("gif_animated.gif"), file_("webp_lossless_rgba.webp")],
                                 [file_("png_l_trns.png"), file_("png_rgb_trns.png"), file_("gif_transparent.gif"),
                                  file_("jpeg_baseline_420.jpg"), file_("jpeg_cmyk.jpg")]],
            SMALL, "small", split)
    add("8b_1200x1600_split", [[syn(1200, 1600, 15)]], IDEFICS2_8B, "idefics2-8b", True)
    add("8b_2000x500_split", [[syn(500, 2000, 16)]], IDEFICS2_8B, "idefics2-8b", True)
    return cases


def processor_expectations():
    tensors, out_cases = {}, []
    for case in processor_cases():
        samples = [[pil_from(s) for s in sample] for sample in case["samples"]]
        try:
            processor_run(samples, case["config"], do_image_splitting=case["do_image_splitting"])
        except Exception as e:  # noqa: BLE001 - record how the reference fails
            out_cases.append(dict(name=case["name"], index=case["index"], samples=case["samples"],
                                  config=case["config_name"], do_image_splitting=case["do_image_splitting"],
                                  error=f"{type(e).__name__}: {e}"))
            print(case["name"], "reference error:", type(e).__name__, e)
            continue
        u8_vals, mask = processor_run(samples, dict(case["config"], do_rescale=False, do_normalize=False),
                                      do_image_splitting=case["do_image_splitting"])
        full_vals, full_mask = processor_run(samples, case["config"], do_image_splitting=case["do_image_splitting"])
        assert u8_vals.dtype in (np.float32, np.uint8) and mask.dtype == np.int64, (u8_vals.dtype, mask.dtype)
        assert np.array_equal(mask, full_mask)
        assert np.all(u8_vals == np.round(u8_vals)) and u8_vals.min() >= 0 and u8_vals.max() <= 255
        u8 = u8_vals.astype(np.uint8)
        # The normalized output is a per-value function of the uint8 frame: check it with transformers' own LUT.
        lut = normalize_lut(case["config"]["image_mean"], case["config"]["image_std"])
        expect_full = np.stack([lut[c][u8[:, :, c]] for c in range(3)], axis=2)
        expect_full = np.where(mask[:, :, None].astype(bool), expect_full, np.float32(0))
        assert np.array_equal(expect_full.view(np.uint32), full_vals.view(np.uint32)), case["name"]
        B, M, C, H, W = u8.shape
        frames = []
        for b in range(B):
            for m in range(M):
                mk = mask[b, m]
                h = int(mk[:, 0].sum()) if mk.any() else 0
                w = int(mk[0, :].sum()) if mk.any() else 0
                rect = np.zeros_like(mk)
                rect[:h, :w] = 1
                assert np.array_equal(rect, mk), "mask is not a top-left rectangle"
                frame = np.ascontiguousarray(u8[b, m, :, :h, :w].transpose(1, 2, 0))  # HWC
                assert not u8[b, m][:, h:, :].any() and not u8[b, m][:, :, w:].any()
                fr = {"b": b, "m": m, "h": h, "w": w}
                if h and frame.nbytes <= FULL_FRAME_LIMIT:
                    tensors[f"proc/{case['index']}/{b}/{m}"] = frame
                elif h:
                    fr["digest"] = digest(frame)
                frames.append(fr)
        out_cases.append(dict(name=case["name"], index=case["index"], samples=case["samples"],
                              config=case["config_name"], do_image_splitting=case["do_image_splitting"],
                              shape=[B, M, C, H, W], frames=frames))
        print(case["name"], [B, M, C, H, W])
    return tensors, out_cases


def normalize_lut(mean, std):
    """transformers' float32 output for every uint8 value (PIL processor, no resize), per channel."""
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    img = Image.fromarray(np.stack([ramp] * 3, -1))
    proc = Idefics2ImageProcessorPil(**dict(IDEFICS2_8B, do_resize=False, do_image_splitting=False,
                                            image_mean=mean, image_std=std))
    vals = proc([[img]], return_tensors="np")["pixel_values"][0, 0]  # [3, 16, 16]
    return np.ascontiguousarray(vals.reshape(3, 256))


def main():
    files = make_files()
    dec_t, dec_meta = decode_expectations(files)
    res_t, res_cases, res_big = resize_expectations()
    proc_t, proc_cases = processor_expectations()
    luts = {
        "lut/idefics2": normalize_lut([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
        "lut/clip": normalize_lut([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]),
    }
    versions = {"transformers": transformers.__version__, "pillow": PIL.__version__,
                "numpy": np.__version__, "safetensors": safetensors.__version__}
    save_file(dec_t, str(OUT / "decode.safetensors"), metadata={"versions": json.dumps(versions)})
    save_file(res_t, str(OUT / "resize.safetensors"), metadata={"versions": json.dumps(versions)})
    save_file({**proc_t, **luts}, str(OUT / "processor.safetensors"), metadata={"versions": json.dumps(versions)})
    manifest = {
        "versions": versions,
        "configs": {"idefics2-8b": IDEFICS2_8B, "small": SMALL},
        "luts": {"idefics2": {"mean": [0.5] * 3, "std": [0.5] * 3},
                 "clip": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}},
        "decode": dec_meta,
        "resize": {"filters": FILTERS, "cases": res_cases, "big": res_big},
        "processor": proc_cases,
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"fixtures: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
