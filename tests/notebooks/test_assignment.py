"""The assignment's student version: solutions removed, every exercise left to do."""

import subprocess
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]


def test_student_version_blanks_every_solution_and_keeps_the_checks(tmp_path):
    out = tmp_path / "student.ipynb"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_student_notebook.py"),
                           str(ROOT / "notebooks" / "assignment.ipynb"), str(out)],
                          capture_output=True, text=True, check=True)
    assert "5 solution blocks replaced" in done.stdout
    solution = nbformat.read(ROOT / "notebooks" / "assignment.ipynb", as_version=4)
    student = nbformat.read(out, as_version=4)
    assert len(student.cells) == len(solution.cells)
    text = "\n".join(c.source for c in student.cells if c.cell_type == "code")
    assert "BEGIN SOLUTION" not in text and "g.mean(dim=(1, 2))" not in text
    assert text.count('raise NotImplementedError("your code here")') == 5
    assert text.count("# check") == 5
    assert all(not c.get("outputs") for c in student.cells if c.cell_type == "code")

    # Run it as a student would before writing anything: each exercise stops at its placeholder.
    client = NotebookClient(student, timeout=300, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o["ename"] for c in student.cells if c.cell_type == "code"
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors.count("NotImplementedError") == 5, errors
