"""The reference check: equal within the tolerance, a named failure beyond it."""

import pandas as pd

from conftest import ROOT
from dti import reference


def write(root, image_mean):
    (root / "tables").mkdir(parents=True)
    pd.DataFrame({"label": ["ti", "dti"], "image_mean": image_mean, "text_mean": [0.3, 0.5]}).to_csv(
        root / "tables" / "main.csv", index=False)


def test_reference_check(tmp_path):
    write(tmp_path / "ref", [0.40, 0.50])
    write(tmp_path / "close", [0.41, 0.50])
    write(tmp_path / "far", [0.40, 0.60])
    assert reference.compare(tmp_path / "close", tmp_path / "ref") == []
    problems = reference.compare(tmp_path / "far", tmp_path / "ref")
    assert len(problems) == 1 and "image_mean row 1" in problems[0]
    assert reference.main(["check", "--results", str(tmp_path / "far"), "--reference", str(tmp_path / "ref")]) == 1
    (tmp_path / "close" / "tables" / "main_scores").mkdir()
    (tmp_path / "close" / "tables" / "main_scores" / "summary.csv").write_text("method,mean\nti,0.5\n")
    reference.save(tmp_path / "close", tmp_path / "saved")
    assert reference.compare(tmp_path / "close", tmp_path / "saved") == []
    # the summaries below tables/ are kept too (a README may cite them)
    assert (tmp_path / "saved" / "tables" / "main_scores" / "summary.csv").read_text() == "method,mean\nti,0.5\n"


def _run(capsys, *args):
    code = reference.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def test_a_vacuous_check_fails(tmp_path, capsys):
    ref, far = tmp_path / "ref", tmp_path / "far"
    write(ref, [0.40, 0.50])
    (far / "tables").mkdir(parents=True)
    pd.DataFrame({"label": ["ti", "dti"], "image_mean": [5.4, 5.5], "text_mean": [5.3, 5.5]}).to_csv(
        far / "tables" / "main.csv", index=False)
    # save from a folder with no tables: refused, nothing written
    code, _, err = _run(capsys, "save", "--results", str(tmp_path / "missing"), "--reference", str(tmp_path / "new"))
    assert code == 2 and len(err) == 1 and "has no tables to save" in err[0]
    assert not (tmp_path / "new").exists()
    # a tolerance that is not a finite number >= 0 would pass (nan) or fail (negative) every cell
    for tolerance in ("nan", "inf", "-0.1"):
        code, out, err = _run(capsys, "check", "--results", str(far), "--reference", str(ref), "--tolerance", tolerance)
        assert code == 2 and len(err) == 1 and "must be a finite number >= 0" in err[0]
        assert "matches" not in out
    # a reference with no tables at all
    (tmp_path / "bare" / "tables").mkdir(parents=True)
    code, out, err = _run(capsys, "check", "--results", str(far), "--reference", str(tmp_path / "bare"))
    assert code == 2 and "has no tables" in err[0] and "matches" not in out
    # a reference whose tables hold no number to compare
    for root in (tmp_path / "words", tmp_path / "words_run"):
        (root / "tables").mkdir(parents=True)
        pd.DataFrame({"label": ["ti"], "image_mean": [float("nan")]}).to_csv(root / "tables" / "main.csv", index=False)
    code, out, _ = _run(capsys, "check", "--results", str(tmp_path / "words_run"), "--reference",
                        str(tmp_path / "words"))
    assert code == 1 and "no number was compared" in out and "matches" not in out
    # unchanged: a real difference, a real match
    assert _run(capsys, "check", "--results", str(far), "--reference", str(ref))[0] == 1
    assert _run(capsys, "check", "--results", str(ref), "--reference", str(ref), "--tolerance", "0")[0] == 0


def test_readme_blocks_get_the_reference_tables(tmp_path, capsys):
    (tmp_path / "ref" / "tables").mkdir(parents=True)
    (tmp_path / "ref" / "tables" / "claims.md").write_text("| claim | verdict |\n|---|---|\n| a | reproduced |\n")
    readme = tmp_path / "README.md"
    readme.write_text("Intro.\n<!-- table: tables/claims.md -->\nan old copy\n<!-- end table -->\nAfter.\n")
    assert reference.main(["readme", "--readme", str(readme), "--reference", str(tmp_path / "ref")]) == 0
    assert readme.read_text() == ("Intro.\n<!-- table: tables/claims.md -->\n| claim | verdict |\n|---|---|\n"
                                  "| a | reproduced |\n<!-- end table -->\nAfter.\n")
    # a block naming a table the reference lacks: refused, the README as it was
    readme.write_text("<!-- table: tables/main.md -->\nx\n<!-- end table -->\n")
    code, _, err = _run(capsys, "readme", "--readme", str(readme), "--reference", str(tmp_path / "ref"))
    assert code == 2 and len(err) == 1 and "tables/main.md" in err[0]
    assert readme.read_text() == "<!-- table: tables/main.md -->\nx\n<!-- end table -->\n"


def test_the_mini_readme_shows_the_committed_tables():
    """Its results section is the reference's generated tables (claims included), not a hand copy."""
    readme = ROOT / "experiments" / "mini" / "README.md"
    text = readme.read_text()
    assert "<!-- table: tables/claims.md -->" in text and "<!-- table: tables/main.md -->" in text
    assert reference.fill_readme(text, ROOT / "results" / "reference" / "mini") == text
