"""Make the student version of a course notebook from its solution version.

Usage::

    python scripts/make_student_notebook.py notebooks/assignment.ipynb assignment-student.ipynb

In the solution notebook, each exercise's answer stands between a line ``# BEGIN SOLUTION``
and a line ``# END SOLUTION`` (the nbgrader convention). The student version replaces each
such block by ``raise NotImplementedError(...)`` at the same indentation and drops all
outputs; everything else (instructions, setup, self-checks) is kept as it is.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"


def strip_solutions(source: str) -> tuple[str, int]:
    """Return ``source`` with every solution block replaced, and the number of blocks."""
    out: list[str] = []
    inside, blocks = False, 0
    for line in source.splitlines():
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError("nested '# BEGIN SOLUTION'")
            inside, blocks = True, blocks + 1
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f'{indent}raise NotImplementedError("your code here")')
        elif stripped == END:
            if not inside:
                raise ValueError("'# END SOLUTION' without '# BEGIN SOLUTION'")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError("'# BEGIN SOLUTION' without '# END SOLUTION'")
    return "\n".join(out), blocks


def make_student(src: Path, dst: Path) -> int:
    """Write the student version of ``src`` to ``dst``; returns the number of exercises blanked."""
    nb = nbformat.read(src, as_version=4)
    total = 0
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source, n = strip_solutions(cell.source)
            total += n
            cell.outputs, cell.execution_count = [], None
    if total == 0:
        raise ValueError(f"{src} has no '# BEGIN SOLUTION' blocks")
    nbformat.write(nb, dst)
    return total


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    n = make_student(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"wrote {sys.argv[2]}: {n} solution blocks replaced")
