"""The crate's module graph from its sources: which top-level module names which through
`crate::` (in `use` trees and paths), its cycles, and whether it follows the order of
`mod` lines in src/lib.rs (each module naming only modules declared before it); inside
each folder module, the same for its children (through `super::` and `crate::` paths);
and the files over 500 lines of code that are not one concern.

    python3 scripts/module_graph.py          # prints the edges, cycles, order breaks, sizes
Exits 1 if there is a cycle or an unexplained long file. Test modules
(`#[cfg(test)] mod tests`) are left out of both.
"""
import pathlib
import re
import sys

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"


def top_level(path):
    rel = path.relative_to(SRC).parts
    return rel[0].removesuffix(".rs")


# Files over the line limit that hold one concern, and which.
LONG = {
    "config.rs": "every server setting, each declared once with its flag, variable, key, doc and default",
    "repository/lifecycle.rs": "the version lifecycle: loads in dependency order, swaps, retires, unloads",
    "repository/loader.rs": "one version's load, step by step: engine, spec, warm-up, budget, workers",
}
LIMIT = 500


def code(text):
    """The text before its test module."""
    return text.split("#[cfg(test)]\nmod tests")[0]


def names(text, prefix="crate"):
    """Modules named right after `prefix::` (`crate`, `super`, `crate::repository`),
    inside use trees too."""
    text = code(text)
    escaped = re.escape(prefix)
    found = set(re.findall(escaped + r"::([a-z_]+)\b(?!!)", text))
    for tree in re.findall(r"use " + escaped + r"::\{(.*?)\};", text, re.S):
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
    for folder in sorted(p.parent for p in SRC.rglob("mod.rs")):
        cycles += folder_cycles(folder)
    print("cycles:", cycles or "none")
    long = long_files()
    return 1 if cycles or long else 0


def cycles_of(edges):
    cycles, state = [], {}

    def visit(m, stack):
        state[m] = 1
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    return cycles


def folder_cycles(folder):
    """Cycles among a folder module's children, each child named by its file or folder."""
    module = "::".join(folder.relative_to(SRC).parts)
    children = {p.stem if p.is_file() else p.name for p in folder.iterdir()
                if (p.suffix == ".rs" and p.name != "mod.rs") or (p / "mod.rs").exists()}
    edges = {c: set() for c in children}
    for path in folder.rglob("*.rs"):
        rel = path.relative_to(folder).parts
        if rel == ("mod.rs",):
            continue
        child = rel[0].removesuffix(".rs")
        depth = len(rel) - 1 if rel[-1] != "mod.rs" else len(rel) - 2
        text = path.read_text()
        named = names(text, "crate::" + module)
        named |= names(text, "::".join(["super"] * (depth + 1)))
        edges[child] |= {n for n in named if n in children and n != child}
    cycles = cycles_of(edges)
    for cycle in cycles:
        print(f"cycle in {module}: {' -> '.join(cycle)}")
    return cycles


def long_files():
    """Files with more than LIMIT lines of code (tests left out) not listed in LONG."""
    unexplained = []
    for path in sorted(SRC.rglob("*.rs")):
        rel = str(path.relative_to(SRC))
        lines = code(path.read_text()).count("\n")
        if lines > LIMIT:
            why = LONG.get(rel)
            print(f"{rel}: {lines} lines of code: {why or 'UNEXPLAINED'}")
            if not why:
                unexplained.append(rel)
    print("long files not one concern:", unexplained or "none")
    return unexplained


if __name__ == "__main__":
    sys.exit(main())
