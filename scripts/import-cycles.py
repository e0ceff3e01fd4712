#!/usr/bin/env python3
"""Import circles between the files of one crate: every `crate::a::b`, `super::` and child-module
path (in use lines and inline, comments and `#[cfg(test)] mod tests` left out) is an edge to the
module file it names; prints the two-file circles and every larger strongly connected group.
A module and its own submodule using each other is normal Rust and only counted.

    scripts/import-cycles.py [SRC_DIR]      (default vmm/src)
"""
import os, re, sys
root = sys.argv[1] if len(sys.argv) > 1 else "vmm/src"
files = {}
for d, _, fs in os.walk(root):
    for f in fs:
        if f.endswith(".rs"):
            p = os.path.join(d, f)
            rel = os.path.relpath(p, root)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib", "main"):
                rel = rel[:-1]
            if rel and rel[0] == "bin":
                continue
            files[tuple(rel)] = p
def resolve(path):
    # longest prefix of path that is a module file
    for n in range(len(path), 0, -1):
        if tuple(path[:n]) in files:
            return tuple(path[:n])
    return None
edges = set()
for mod, p in files.items():
    src = open(p).read()
    # drop #[cfg(test)] mod tests { ... } blocks roughly: skip files named tests
    if mod and mod[-1] == "tests":
        continue
    cut = src.find("#[cfg(test)]\nmod tests")
    if cut >= 0:
        src = src[:cut]
    src = re.sub(r"//.*", "", src)
    is_dir_mod = p.endswith(("mod.rs", "lib.rs"))
    here = list(mod) if is_dir_mod else list(mod[:-1])  # module whose children are siblings
    for m in re.finditer(r"\b(crate|super(?:::super)*)::((?:[a-z_][a-z0-9_]*::)*[A-Za-z_][A-Za-z0-9_]*)", src):
        head, tail = m.group(1), m.group(2).split("::")
        if head == "crate":
            base = []
        else:
            ups = head.count("super")
            base = list(mod)[:len(mod) - ups]
        target = resolve(base + tail)
        if target and target != mod:
            edges.add((mod, target))
    # paths into a child module without crate::/super:: (`use disk::Disk;` in block/mod.rs)
    children = set(re.findall(r"^\s*(?:pub(?:\([a-z]+\))? )?mod ([a-z_][a-z0-9_]*);", src, re.M))
    for m in re.finditer(r"(?<![:\w])([a-z_][a-z0-9_]*)::((?:[a-z_][a-z0-9_]*::)*[A-Za-z_][A-Za-z0-9_]*)", src):
        if m.group(1) in children:
            target = resolve(list(here) + [m.group(1)] + m.group(2).split("::"))
            if target and target != mod:
                edges.add((mod, target))
    # use {a, b} groups: crate::x::{y, z::w}
    for m in re.finditer(r"\b(crate|super(?:::super)*)::((?:[a-z_][a-z0-9_]*::)*)\{([^}]*)\}", src):
        head, prefix = m.group(1), [s for s in m.group(2).split("::") if s]
        base = [] if head == "crate" else list(mod)[:len(mod) - head.count("super")]
        for item in m.group(3).split(","):
            item = item.strip().split(" as ")[0]
            if not item: continue
            target = resolve(base + prefix + item.split("::"))
            if target and target != mod:
                edges.add((mod, target))
name = lambda m: "/".join(m) or "lib"
# ancestors: a module file declaring `mod child` is not an import; edges to ancestors (parent mod.rs) are counted
parent = lambda a, b: a == b[:len(a)] and len(b) == len(a) + 1
nested = sorted({tuple(sorted((a, b))) for a, b in edges if (b, a) in edges and (parent(a, b) or parent(b, a))})
edges = {(a, b) for a, b in edges if not (parent(b, a) and (b, a) in edges)}
print(f"(left out: {len(nested)} parent/child pairs, a module and its own submodule using each other: "
      + ", ".join(name(a) + "<->" + name(b) for a, b in nested) + ")")
two = sorted({tuple(sorted((a, b))) for a, b in edges if (b, a) in edges})
print(f"{len(edges)} edges, {len(two)} two-file circles")
for a, b in two:
    print(f"  {name(a)} <-> {name(b)}")
# SCCs (Tarjan)
idx, low, st, on, sccs, c = {}, {}, [], set(), [], [0]
adj = {}
for a, b in edges: adj.setdefault(a, []).append(b)
sys.setrecursionlimit(10000)
def sc(v):
    idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
    for w in adj.get(v, []):
        if w not in idx: sc(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], idx[w])
    if low[v] == idx[v]:
        comp = []
        while True:
            w = st.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(comp)
for v in files:
    if v not in idx: sc(v)
print(f"{len(sccs)} strongly connected groups of files (any cycle length)")
for comp in sccs:
    print("  " + ", ".join(sorted(name(m) for m in comp)))
sys.exit(1 if sccs else 0)
