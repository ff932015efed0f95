#!/usr/bin/env python3
"""Where a callgrind profile's instructions go, by crate: each instruction
is counted for the crate its source line belongs to (inlined code
included, which `callgrind_annotate` files under the caller), or, for
the standard library's generic code inlined into a crate's function
(moves, `Option`s, drops), for the crate of that function; C and
assembly files are named as they are. Divided by the number of requests.

    python3 benches/callgrind_crates.py PROFILE REQUESTS [TOP]

`benches/instructions.sh` runs it when BREAKDOWN=1.
"""

import collections
import re
import sys

NAMED = re.compile(r"\((\d+)\)(?: (.*))?")
CRATE = re.compile(r"/registry/src/[^/]+/([^/]+?)-\d+\.\d+\.\d+[^/]*/")
PATH_ROOT = re.compile(r"(?:^|[<\s(,&*])([A-Za-z_][A-Za-z0-9_]*)::")
STD = {"core", "alloc", "std"}
COPY = re.compile(r"^__mem(cpy|move)_")


def owner(path, function):
    """The crate (or C file) that instructions at `path` in `function`
    are counted for."""
    m = CRATE.search(path)
    if m:
        return m.group(1)
    if "/rustc/" in path:
        for root in PATH_ROOT.findall(function):
            if root not in STD:
                return root.replace("_", "-")
        return "std"
    if path.endswith(".rs"):
        return "sluice"
    return path.rsplit("/", 1)[-1] or "?"


def self_costs(profile):
    """Self instructions per (source file, function), and the instructions
    of libc's memcpy/memmove per (source file, function) calling it. Call
    lines are followed by the call's inclusive cost, which belongs to the
    callee."""
    files = {}
    functions = {}
    cost = collections.Counter()
    copies = collections.Counter()
    fn_file = "?"  # the function's own source file (fl=)
    current = "?"  # the file of the lines that follow (fl=, fi=, fe=)
    function = "?"
    callee = "?"
    skip = False
    with open(profile, errors="replace") as f:
        for line in f:
            c = line[:1]
            if c.isdigit() or c in "+-*":
                if skip:
                    skip = False
                    parts = line.split()
                    if len(parts) > 1 and COPY.search(callee):
                        copies[(current, function)] += int(parts[1])
                    continue
                parts = line.split()
                if len(parts) > 1:
                    cost[(current, function)] += int(parts[1])
                continue
            key, _, rest = line.rstrip("\n").partition("=")
            if key in ("fl", "fi", "fe", "cfl", "cfi"):
                m = NAMED.match(rest)
                if m:
                    if m.group(2) is not None:
                        files[m.group(1)] = m.group(2)
                    name = files.get(m.group(1), "?")
                else:
                    name = rest
                if key == "fl":
                    fn_file = name
                if key in ("fl", "fi", "fe"):
                    current = name
            elif key in ("fn", "cfn"):
                m = NAMED.match(rest)
                name = rest
                if m:
                    if m.group(2) is not None:
                        functions[m.group(1)] = m.group(2)
                    name = functions.get(m.group(1), "?")
                if key == "fn":
                    # A new function's lines are in its own file until an
                    # fi= says they were inlined from another.
                    function = name
                    current = fn_file
                else:
                    callee = name
            elif key == "calls":
                skip = True
    return cost, copies


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    profile, requests = sys.argv[1], int(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 15
    costs, copies = self_costs(profile)
    by_owner = collections.Counter()
    for (path, function), n in costs.items():
        by_owner[owner(path, function)] += n
    total = sum(by_owner.values())
    print("instructions per request, by crate:")
    for name, n in by_owner.most_common(top):
        print(f"{n // requests:>8,}  {100 * n / total:5.1f}%  {name}")
    rest = total - sum(n for _, n in by_owner.most_common(top))
    print(f"{rest // requests:>8,}  {100 * rest / total:5.1f}%  (the rest)")
    by_caller = collections.Counter()
    for (path, function), n in copies.items():
        by_caller[owner(path, function)] += n
    print("of which memcpy/memmove, by the crate calling it:")
    for name, n in by_caller.most_common(5):
        print(f"{n // requests:>8,}  {100 * n / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
