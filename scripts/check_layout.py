#!/usr/bin/env python3
"""Layout rules of src/core, checked in CI:

- no import cycle between modules (a module is a file; `crate::core::a::b::Item`
  counts as a use of the longest module prefix, `super::x` of the parent's x);
- no file over MAX_FILE lines;
- no function over MAX_FN lines, except the ones listed in ALLOWED_LONG (declarative
  tables), each with its reason.

Prints what breaks a rule and exits 1, or prints a one-line summary and exits 0.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "core")
MAX_FILE = 500
MAX_FN = 80
# function name -> why it may be long
ALLOWED_LONG = {
    "encode": "the metrics exposition: one declarative family after another",
}


def module_of(path):
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    return tuple(rel)


def main():
    files = {}
    for dirpath, _, names in os.walk(ROOT):
        for n in names:
            if n.endswith(".rs"):
                p = os.path.join(dirpath, n)
                files[module_of(p)] = p
    modules = set(files)
    graph = {m: set() for m in modules}
    problems = []
    for mod, path in sorted(files.items()):
        text = open(path, encoding="utf-8").read()
        # Inline test modules refer to their own file through `super::`.
        code = re.split(r"\n#\[cfg\(test\)\]\nmod tests", text)[0]
        for m in re.finditer(r"crate::core::((?:[a-z_]+::)*[a-z_]+)", code):
            parts = tuple(m.group(1).split("::"))
            target = next((parts[:k] for k in range(len(parts), 0, -1) if parts[:k] in modules), None)
            if target is not None and target != mod:
                graph[mod].add(target)
        for m in re.finditer(r"\bsuper::([a-z_]+)", code):
            target = mod[:-1] + (m.group(1),)
            if target in modules and target != mod:
                graph[mod].add(target)
        lines = text.split("\n")
        if len(lines) > MAX_FILE:
            problems.append(f"{os.path.relpath(path)}: {len(lines)} lines (max {MAX_FILE})")
        tests_at = text.find("#[cfg(test)]\nmod tests")
        tests_line = text[:tests_at].count("\n") if tests_at >= 0 else len(lines)
        for i, line in enumerate(lines[:tests_line]):
            fm = re.match(r"^(\s*)(?:pub(?:\([^)]*\))? )?(?:async )?(?:const )?fn ([a-z_0-9]+)", line)
            if not fm or line.rstrip().endswith(";"):
                continue
            indent, name = fm.group(1), fm.group(2)
            end = next((j for j in range(i + 1, len(lines)) if lines[j] == indent + "}"), i)
            n = end - i + 1
            if n > MAX_FN and name not in ALLOWED_LONG:
                problems.append(f"{os.path.relpath(path)}:{i + 1}: fn {name} is {n} lines (max {MAX_FN})")
    # Cycles: Tarjan's strongly connected components.
    index, low, stack, on, sccs = {}, {}, [], set(), []

    def visit(v, counter=[0]):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(modules):
        if v not in index:
            visit(v)
    for comp in sccs:
        names = sorted("::".join(c) for c in comp)
        edges = sorted(f"{'::'.join(a)} -> {'::'.join(b)}" for a in comp for b in graph[a] if b in comp)
        problems.append("import cycle among " + ", ".join(names) + ": " + "; ".join(edges))
    if problems:
        print("layout check failed:")
        for p in problems:
            print("  " + p)
        return 1
    print(f"layout check: {len(modules)} modules, no import cycle, files <= {MAX_FILE} lines, functions <= {MAX_FN} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
