#!/usr/bin/env python3
"""Fails when two files (modules) of one crate use each other, directly or
through others: a crate's modules must form layers.

    scripts/module_cycles.py kvs-core kvs-server ...

Reads `crate::a::b` and `crate::{a, b}` paths and `super::x` outside
comments and `#[cfg(test)]` modules (tests may reach anywhere)."""
import os
import re
import sys


def modules(crate):
    src = os.path.join(crate, "src")
    found = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            parts = os.path.relpath(path, src)[:-3].split(os.sep)
            if parts[-1] == "mod":
                parts = parts[:-1]
            if parts in (["lib"], ["main"]) or parts[:1] == ["bin"]:
                continue
            with open(path) as fh:
                found["::".join(parts)] = fh.read()
    return found


def edges_of(files):
    names = set(files)
    edges = {m: set() for m in names}
    for m, text in files.items():
        cut = text.find("#[cfg(test)]")
        body = text if cut < 0 else text[:cut]
        body = "\n".join(l for l in body.split("\n") if not l.strip().startswith("//"))
        refs = re.findall(r"crate::([a-z_]+(?:::[a-z_]+)*)", body)
        for group in re.findall(r"crate::\{([^}]*)\}", body):
            refs += [x.strip().split("::")[0] for x in group.split(",") if x.strip()[:1].islower()]
        parent = m.rsplit("::", 1)[0] if "::" in m else ""
        refs += [(parent + "::" + r) if parent else r for r in re.findall(r"\bsuper::([a-z_]+)", body)]
        for ref in refs:
            parts = ref.split("::")
            for k in range(len(parts), 0, -1):
                cand = "::".join(parts[:k])
                if cand in names:
                    related = cand == m or m.startswith(cand + "::") or cand.startswith(m + "::")
                    if not related:
                        edges[m].add(cand)
                    break
    return edges


def cycles(edges):
    found = set()

    def walk(start, node, path):
        for n in edges[node]:
            if n == start:
                found.add(" -> ".join(path + [start]))
            elif n not in path and len(path) < 8:
                walk(start, n, path + [n])

    for m in sorted(edges):
        walk(m, m, [m])
    return sorted(found)


bad = False
for crate in sys.argv[1:]:
    for c in cycles(edges_of(modules(crate))):
        print(f"{crate}: import cycle {c}")
        bad = True
sys.exit(1 if bad else 0)
