"""Writes a Deno-kernel .ipynb from a plain-text cell list, so notebooks are reviewed as code.

Usage: python3 scripts/make_notebook.py SOURCE.ts OUT.ipynb
SOURCE.ts holds cells separated by lines `// %% [markdown]` or `// %%`; markdown cells have
their lines prefixed by `// `.
"""
import json
import sys


def cells_of(text):
    cells, kind, lines = [], None, []
    for line in text.splitlines():
        if line.startswith("// %%"):
            if kind is not None:
                cells.append((kind, lines))
            kind = "markdown" if "[markdown]" in line else "code"
            lines = []
        else:
            lines.append(line[3:] if kind == "markdown" and line.startswith("// ") else
                         ("" if kind == "markdown" and line == "//" else line))
    if kind is not None:
        cells.append((kind, lines))
    out = []
    for kind, lines in cells:
        while lines and not lines[-1].strip():
            lines.pop()
        src = [l + "\n" for l in lines]
        if src:
            src[-1] = src[-1].rstrip("\n")
        cell = {"cell_type": kind, "metadata": {}, "source": src}
        if kind == "code":
            cell.update(execution_count=None, outputs=[])
        out.append(cell)
    return out


def main():
    src, dst = sys.argv[1], sys.argv[2]
    nb = {
        "cells": cells_of(open(src).read()),
        "metadata": {
            "kernelspec": {"display_name": "Deno", "language": "typescript", "name": "deno"},
            "language_info": {"name": "typescript", "file_extension": ".ts",
                              "mimetype": "text/x.typescript"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    with open(dst, "w") as f:
        json.dump(nb, f, indent=1)
        f.write("\n")


main()
