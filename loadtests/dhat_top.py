#!/usr/bin/env python3
"""Top allocation sites of a dhat heap profile (dhat-heap.json), by bytes live
at the end of the profile (default) or at the global peak (--gmax), with the
first frames outside the allocator and the standard library's containers.

    python3 loadtests/dhat_top.py target/loadtests/conn-dhat.json [--gmax] [-n 15] [--frames 4]
"""
import argparse
import json

SKIP = ("alloc::", "dhat::", "<alloc::", "core::", "<core::", "__rust", "std::", "hashbrown::",
        "<hashbrown::", "bytes::bytes_mut::", "<bytes::", "bytes::", "[root]", "<dhat::",
        "tokio::io::util::buf_", "<tokio::io::util::buf_", "???")


def frame_name(f):
    # "0x1234: pingora_core::foo::bar (src/x.rs:12:3)" -> "pingora_core::foo::bar (x.rs:12)"
    s = f.split(": ", 1)[-1]
    return s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--gmax", action="store_true", help="live at the global peak instead of at the end")
    ap.add_argument("-n", type=int, default=15)
    ap.add_argument("--frames", type=int, default=3)
    a = ap.parse_args()
    d = json.load(open(a.file))
    ftbl = d["ftbl"]
    key_b, key_n = ("gb", "gbk") if a.gmax else ("eb", "ebk")
    total = sum(p[key_b] for p in d["pps"])
    rows = []
    for p in d["pps"]:
        if p[key_b] == 0:
            continue
        names = [frame_name(ftbl[i]) for i in p["fs"]]
        ours = [n for n in names if not n.startswith(SKIP)]
        rows.append((p[key_b], p[key_n], ours[: a.frames] or names[: a.frames]))
    rows.sort(key=lambda r: -r[0])
    what = "at the global peak" if a.gmax else "at the end of the profile"
    print(f"live {what}: {total / 1048576:.2f} MiB in {sum(r[1] for r in rows)} blocks")
    print("| MiB | blocks | bytes/block | where (first frames outside alloc/std) |")
    print("|---|---|---|---|")
    for b, n, fr in rows[: a.n]:
        print(f"| {b / 1048576:.2f} | {n} | {b // max(n, 1)} | {' <- '.join(fr)} |")


if __name__ == "__main__":
    main()
