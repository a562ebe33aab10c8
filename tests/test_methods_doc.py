"""docs/methods.md's registry tables are generated from the registries and must be up to date."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("make_methods_doc", ROOT / "scripts" / "make_methods_doc.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_methods_doc_is_up_to_date() -> None:
    assert _script().main(["--check"]) == 0, "run: python scripts/make_methods_doc.py"


def test_every_method_and_metric_is_documented() -> None:
    import camwidgets
    from camwidgets.core import metric_registry

    text = (ROOT / "docs" / "methods.md").read_text(encoding="utf-8")
    for m in camwidgets.methods():
        assert f"#### {m.label} (`{m.name}`)" in text and m.reference in text
    for mt in metric_registry.list_metrics():
        assert f"| `{mt.name}` |" in text


def test_project_docs_stand_on_their_own() -> None:
    # The project's text never points at files outside the repository (the team's spec, paper
    # copies or style notes): papers are cited by title, year and arXiv id.
    bad = []
    for path in [*ROOT.joinpath("camwidgets").rglob("*.py"), *ROOT.joinpath("docs").rglob("*.md"),
                 *ROOT.joinpath("notebooks").glob("*.ipynb"), *ROOT.joinpath("benchmarks").glob("*.py"),
                 ROOT / "README.md"]:
        text = path.read_text(encoding="utf-8")
        for needle in ("SPEC §", "SPEC.md", "STYLE.md", "000_*", "001_*", "002_*", "003_*", "004_*", "shared/"):
            if needle in text:
                bad.append(f"{path.relative_to(ROOT)}: {needle}")
    assert not bad, bad
