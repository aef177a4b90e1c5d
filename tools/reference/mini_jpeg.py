"""A tiny baseline JPEG writer for the layouts Pillow's encoder cannot produce (YCCK, Adobe RGB, RGB
component ids, 4:4:0 / 4:1:1 / mixed sampling, one scan per component, no DHT, restart intervals).

Only the decoder is under test, so the encoder is simple: float DCT, rounding quantisation, the
standard (Annex K) Huffman tables. Used by make_jpeg_fixtures.py.
"""

import struct

import numpy as np
from PIL import Image

ZIGZAG = [0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
          13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52,
          45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63]

DC_COUNTS = [[0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0], [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]]
DC_SYMBOLS = [list(range(12)), list(range(12))]
AC_COUNTS = [[0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 125], [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 119]]
AC_SYMBOLS = [
    [1, 2, 3, 0, 4, 17, 5, 18, 33, 49, 65, 6, 19, 81, 97, 7, 34, 113, 20, 50, 129, 145, 161, 8, 35, 66, 177, 193,
     21, 82, 209, 240, 36, 51, 98, 114, 130, 9, 10, 22, 23, 24, 25, 26, 37, 38, 39, 40, 41, 42, 52, 53, 54, 55,
     56, 57, 58, 67, 68, 69, 70, 71, 72, 73, 74, 83, 84, 85, 86, 87, 88, 89, 90, 99, 100, 101, 102, 103, 104, 105,
     106, 115, 116, 117, 118, 119, 120, 121, 122, 131, 132, 133, 134, 135, 136, 137, 138, 146, 147, 148, 149, 150,
     151, 152, 153, 154, 162, 163, 164, 165, 166, 167, 168, 169, 170, 178, 179, 180, 181, 182, 183, 184, 185, 186,
     194, 195, 196, 197, 198, 199, 200, 201, 202, 210, 211, 212, 213, 214, 215, 216, 217, 218, 225, 226, 227, 228,
     229, 230, 231, 232, 233, 234, 241, 242, 243, 244, 245, 246, 247, 248, 249, 250],
    [0, 1, 2, 3, 17, 4, 5, 33, 49, 6, 18, 65, 81, 7, 97, 113, 19, 34, 50, 129, 8, 20, 66, 145, 161, 177, 193, 9, 35,
     51, 82, 240, 21, 98, 114, 209, 10, 22, 36, 52, 225, 37, 241, 23, 24, 25, 26, 38, 39, 40, 41, 42, 53, 54, 55,
     56, 57, 58, 67, 68, 69, 70, 71, 72, 73, 74, 83, 84, 85, 86, 87, 88, 89, 90, 99, 100, 101, 102, 103, 104, 105,
     106, 115, 116, 117, 118, 119, 120, 121, 122, 130, 131, 132, 133, 134, 135, 136, 137, 138, 146, 147, 148, 149,
     150, 151, 152, 153, 154, 162, 163, 164, 165, 166, 167, 168, 169, 170, 178, 179, 180, 181, 182, 183, 184, 185,
     186, 194, 195, 196, 197, 198, 199, 200, 201, 202, 210, 211, 212, 213, 214, 215, 216, 217, 218, 226, 227, 228,
     229, 230, 231, 232, 233, 234, 242, 243, 244, 245, 246, 247, 248, 249, 250],
]


def huff_codes(counts, symbols):
    codes, code, k = {}, 0, 0
    for length in range(1, 17):
        for _ in range(counts[length - 1]):
            codes[symbols[k]] = (code, length)
            code += 1
            k += 1
        code <<= 1
    return codes


DC_CODES = [huff_codes(DC_COUNTS[i], DC_SYMBOLS[i]) for i in range(2)]
AC_CODES = [huff_codes(AC_COUNTS[i], AC_SYMBOLS[i]) for i in range(2)]

_n = np.arange(8)
DCT = np.array([[(np.sqrt(0.5) if u == 0 else 1.0) * np.cos((2 * _n + 1) * u * np.pi / 16) / 2 for u in range(8)]])[0]


class BitWriter:
    def __init__(self):
        self.out, self.acc, self.n = bytearray(), 0, 0

    def put(self, code, length):
        self.acc = (self.acc << length) | code
        self.n += length
        while self.n >= 8:
            self.n -= 8
            b = (self.acc >> self.n) & 0xFF
            self.out.append(b)
            if b == 0xFF:
                self.out.append(0)

    def flush(self):
        if self.n:
            self.put((1 << (8 - self.n)) - 1, 8 - self.n)


def category(v):
    return 0 if v == 0 else int(abs(v)).bit_length()


def encode_block(bw, coefs, pred, dc_codes, ac_codes):
    diff = int(coefs[0]) - pred
    s = category(diff)
    bw.put(*dc_codes[s])
    if s:
        bw.put(diff if diff > 0 else diff + (1 << s) - 1, s)
    run = 0
    for k in range(1, 64):
        v = int(coefs[ZIGZAG[k]])
        if v == 0:
            run += 1
            continue
        while run > 15:
            bw.put(*ac_codes[0xF0])
            run -= 16
        s = category(v)
        bw.put(*ac_codes[(run << 4) | s])
        bw.put(v if v > 0 else v + (1 << s) - 1, s)
        run = 0
    if run:
        bw.put(*ac_codes[0x00])
    return int(coefs[0])


def segment(marker, payload):
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def encode(planes, sampling, quality_scale=1.0, ids=None, jfif=False, adobe=None, restart=0,
           scans="interleaved", write_dht=True):
    """planes: full-resolution uint8 arrays (one per component); sampling: [(h, v)] per component."""
    H, W = planes[0].shape
    n = len(planes)
    ids = ids or list(range(1, n + 1))
    max_h = max(h for h, _ in sampling)
    max_v = max(v for _, v in sampling)
    base = np.array([16, 11, 10, 16, 24, 40, 51, 61] * 8).reshape(8, 8)  # mild, then scaled
    q = [np.clip(np.round(base * quality_scale * (1 if i == 0 else 1.2)), 1, 255).astype(int) for i in range(2)]
    mcux, mcuy = -(-W // (8 * max_h)), -(-H // (8 * max_v))
    comps = []
    for ci, (plane, (h, v)) in enumerate(zip(planes, sampling)):
        # Downsample to the component's size, pad by edge replication to the MCU grid.
        cw, ch = -(-(W * h) // max_h), -(-(H * v) // max_v)
        ph, pw = mcuy * v * 8, mcux * h * 8
        small = np.array(Image.fromarray(plane).resize((cw, ch), Image.BILINEAR)).astype(float)
        small = np.pad(small, ((0, ph - ch), (0, pw - cw)), mode="edge") - 128
        qt = q[0 if ci == 0 else 1]
        blocks = np.zeros((v * mcuy, h * mcux, 64), dtype=int)
        for by in range(v * mcuy):
            for bx in range(h * mcux):
                blk = small[by * 8:by * 8 + 8, bx * 8:bx * 8 + 8]
                coef = DCT @ blk @ DCT.T
                blocks[by, bx] = np.round(coef / qt).astype(int).reshape(64)
        comps.append(dict(h=h, v=v, blocks=blocks, tq=0 if ci == 0 else 1,
                          wib=-(-(W * h) // (8 * max_h)), hib=-(-(H * v) // (8 * max_v))))
    out = bytearray(b"\xff\xd8")
    if jfif:
        out += segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    if adobe is not None:
        out += segment(0xEE, b"Adobe" + struct.pack(">HHHB", 100, 0, 0, adobe))
    for t in range(2):
        out += segment(0xDB, bytes([t]) + bytes(int(q[t].reshape(64)[ZIGZAG[k]]) for k in range(64)))
    sof = struct.pack(">BHHB", 8, H, W, n)
    for ci, c in enumerate(comps):
        sof += bytes([ids[ci], (c["h"] << 4) | c["v"], c["tq"]])
    out += segment(0xC0, sof)
    if write_dht:
        for cls, counts, symbols in ((0, DC_COUNTS, DC_SYMBOLS), (1, AC_COUNTS, AC_SYMBOLS)):
            for t in range(2):
                out += segment(0xC4, bytes([(cls << 4) | t]) + bytes(counts[t]) + bytes(symbols[t]))
    if restart:
        out += segment(0xDD, struct.pack(">H", restart))
    scan_sets = [list(range(n))] if scans == "interleaved" else [[i] for i in range(n)]
    for scan in scan_sets:
        sos = bytes([len(scan)])
        for ci in scan:
            t = 0 if ci == 0 else 1
            sos += bytes([ids[ci], (t << 4) | t])
        out += segment(0xDA, sos + b"\x00\x3f\x00")
        bw = BitWriter()
        preds = [0] * n
        mcus = []
        if len(scan) == 1:
            c = comps[scan[0]]
            mcus = [[(scan[0], by, bx)] for by in range(c["hib"]) for bx in range(c["wib"])]
        else:
            for my in range(mcuy):
                for mx in range(mcux):
                    mcus.append([(ci, my * comps[ci]["v"] + y, mx * comps[ci]["h"] + x)
                                 for ci in scan for y in range(comps[ci]["v"]) for x in range(comps[ci]["h"])])
        rst = 0
        for i, mcu in enumerate(mcus):
            if restart and i and i % restart == 0:
                bw.flush()
                bw.out += bytes([0xFF, 0xD0 + rst])
                rst = (rst + 1) & 7
                preds = [0] * n
            for ci, by, bx in mcu:
                t = 0 if ci == 0 else 1
                preds[ci] = encode_block(bw, comps[ci]["blocks"][by, bx], preds[ci], DC_CODES[t], AC_CODES[t])
        bw.flush()
        out += bw.out
    out += b"\xff\xd9"
    return bytes(out)
