"""Write a deterministic float32 "checkpoint": a slow sine plus small Gaussian noise.

Like real weights, the sign/exponent bytes repeat a lot and the low mantissa bytes are
noise, so zstd finds some, but not much, to compress; no block repeats, so
content-defined chunking finds nothing to deduplicate within the file.

usage: gen_ckpt.py PATH MIB
"""

import sys

import numpy as np

BLOCK = 1 << 22  # floats per block (16 MiB): memory stays flat whatever the size


def main() -> None:
    path, mib = sys.argv[1], int(sys.argv[2])
    total = mib * (1 << 20) // 4
    rng = np.random.default_rng(20240611)
    with open(path, "wb") as out:
        for start in range(0, total, BLOCK):
            n = min(BLOCK, total - start)
            i = np.arange(start, start + n, dtype=np.float64)
            x = 0.05 * np.sin(i * 1e-4) + 0.01 * rng.standard_normal(n)
            out.write(x.astype("<f4").tobytes())


if __name__ == "__main__":
    main()
