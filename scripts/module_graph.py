"""The crate's top-level module graph from its sources: which module names which through
`crate::` (in `use` trees and paths), its cycles, and whether it follows the order of
`mod` lines in src/lib.rs (each module naming only modules declared before it).

    python3 scripts/module_graph.py          # prints the edges, cycles and order breaks
Exits 1 if there is a cycle. Test modules (`#[cfg(test)] mod tests`) are left out.
"""
import pathlib
import re
import sys

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"


def top_level(path):
    rel = path.relative_to(SRC).parts
    return rel[0].removesuffix(".rs")


def names(text):
    """Top-level modules named after `crate::`, inside use trees too."""
    text = text.split("#[cfg(test)]\nmod tests")[0]
    found = set(re.findall(r"crate::([a-z_]+)", text))
    for tree in re.findall(r"use crate::\{(.*?)\};", text, re.S):
        depth, item = 0, ""
        for ch in tree + ",":
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                head = item.strip().split("::")[0].strip()
                if re.fullmatch(r"[a-z_]+", head):
                    found.add(head)
                item = ""
            else:
                item += ch
    return found


def main():
    order = re.findall(r"^pub(?:\(crate\))? mod ([a-z_]+);", (SRC / "lib.rs").read_text(), re.M)
    edges = {m: set() for m in order}
    for path in SRC.rglob("*.rs"):
        if path.name in ("lib.rs", "main.rs"):
            continue
        module = top_level(path)
        if module not in edges:
            continue
        edges[module] |= {n for n in names(path.read_text()) if n in edges and n != module}
    breaks = [(m, n) for m in order for n in sorted(edges[m]) if order.index(n) > order.index(m)]
    for m in order:
        print(f"{m:12} -> {', '.join(sorted(edges[m], key=order.index)) or '-'}")
    # Cycles by depth-first search.
    cycles, state = [], {}

    def visit(m, stack):
        state[m] = 1
        for n in edges[m]:
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in order:
        if m not in state:
            visit(m, [m])
    print("\nimports of a module declared later in lib.rs:", breaks or "none")
    print("cycles:", cycles or "none")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
