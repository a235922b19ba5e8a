#!/usr/bin/env python3
"""Top allocation sites of a dhat heap profile (dhat-heap.json), by bytes live
at the end of the profile (default) or at the global peak (--gmax), with the
first frames outside the allocator and the standard library's containers.

    python3 loadtests/dhat_top.py target/loadtests/conn-dhat.json [--gmax] [-n 15] [--frames 4]
"""
import argparse
import json
import re

# Frames in these files are the allocator's, the standard containers' or dhat's
# own: the "where" column starts at the first frame outside them.
NOISE = ("dhat-", "alloc/", "core/", "std/", "src/raw_vec", "src/vec", "src/alloc", "src/boxed",
         "src/sync", "bytes-", "io/util/buf_", "src/runtime/task", "runtime/task", "src/string",
         "gateway/src/main.rs")


def frame(f):
    """("fn_name", "file:line") of a dhat frame "0x...: name<generics> (file:line:col)"."""
    f = re.sub(r"^0x[0-9a-f]+: ", "", f)
    if not f.endswith(")") or " (" not in f:
        return f, ""
    name, loc = f[:-1].rsplit(" (", 1)
    loc = re.sub(r":\d+$", "", loc)  # keep file:line
    depth, short = 0, ""
    for ch in name:  # drop generic arguments
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif depth == 0 and ch not in "()":
            short += ch
    return short, loc


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
        frames = [frame(ftbl[i]) for i in p["fs"]]
        ours = [f"{n} ({loc})" for n, loc in frames if loc and not loc.startswith(NOISE)]
        rows.append((p[key_b], p[key_n], ours[: a.frames] or [n for n, _ in frames[: a.frames]]))
    rows.sort(key=lambda r: -r[0])
    what = "at the global peak" if a.gmax else "at the end of the profile"
    print(f"live {what}: {total / 1048576:.2f} MiB in {sum(r[1] for r in rows)} blocks")
    print("| MiB | blocks | bytes/block | where (first frames outside alloc/std) |")
    print("|---|---|---|---|")
    for b, n, fr in rows[: a.n]:
        print(f"| {b / 1048576:.2f} | {n} | {b // max(n, 1)} | {' <- '.join(fr)} |")


if __name__ == "__main__":
    main()
