#!/usr/bin/env python3
"""Pre-generates the fixed request bodies that bench/wrk_post.lua POSTs to /log_prob.

Rows are drawn U[0, 1) (seeded) as float32. JSON bodies write each number as the shortest text
that round-trips to the same float32 (e.g. 0.36831355), so both servers parse exactly the same
values; the NPY body is a float32 array [n, D] in the standard .npy format.

    python bench/make_bodies.py --out bench/out/bodies --dim 784 [--seed 0]

writes json-1.json, json-64.json, npy-512.npy (override the sets with --json-rows / --npy-rows)
and prints one line per file: `body file=<path> rows=<n> bytes=<size>`.
"""
import argparse
import io
import os

import numpy as np


def json_body(x):
    # str(np.float32) is the shortest round-trip repr of the float32 value.
    rows = ("[" + ",".join(str(v) for v in row) + "]" for row in x)
    return ('{"inputs":[' + ",".join(rows) + "]}").encode()


def npy_body(x):
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(x, dtype=np.float32))
    return buf.getvalue()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--dim", type=int, default=784)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-rows", type=int, nargs="*", default=[1, 64])
    p.add_argument("--npy-rows", type=int, nargs="*", default=[512])
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    jobs = [("json", n, json_body) for n in args.json_rows] + \
           [("npy", n, npy_body) for n in args.npy_rows]
    for kind, n, make in jobs:
        x = rng.random((n, args.dim), dtype=np.float32)
        path = os.path.join(args.out, f"{kind}-{n}.{kind}")
        data = make(x)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        print(f"body file={path} rows={n} bytes={len(data)}")


if __name__ == "__main__":
    main()
