"""docs/walkthrough.md stays true to the code: every citation `path` `name` names a file that
exists and a definition in it, every figure it embeds exists in docs/figures/, and the script
that makes those figures still runs (with --quick, into a temporary folder)."""
import ast
import os
import re
import subprocess
import sys
import time

from tests.conftest import ROOT

DOC = os.path.join(ROOT, "docs", "walkthrough.md")
FIGURES = os.path.join(ROOT, "docs", "figures")
SCRIPT = os.path.join(FIGURES, "make_figures.py")
REMAKE = "python docs/figures/make_figures.py"

CITATION = re.compile(r"`([\w./-]+\.py)`\s+`([A-Za-z_][\w.]*)`")   # `path` `name`
PATH = re.compile(r"`((?:minirate|docs|tests)/[\w./-]*)`")          # any repository path
FIGURE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")                    # ![caption](file)
MAX_PNG_BYTES = 160 * 1024


def defined_names(source):
    """Names a Python source defines: every `def` and `class` (at any depth, and a method also
    as Class.method) and every top-level assignment. Imported names are not definitions."""
    tree = ast.parse(source)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names.update(f"{node.name}.{child.name}" for child in node.body
                         if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
        for target in targets:
            for leaf in ast.walk(target):
                if isinstance(leaf, ast.Name):
                    names.add(leaf.id)
    return names


def citation_errors(text, root=ROOT):
    """One line per citation of `text` whose file is missing or does not define the name."""
    errors, cache = [], {}
    for path, name in CITATION.findall(text):
        full = os.path.join(root, path)
        if not os.path.isfile(full):
            errors.append(f"`{path}` `{name}`: no such file")
            continue
        if full not in cache:
            with open(full, encoding="utf-8") as f:
                cache[full] = defined_names(f.read())
        if name not in cache[full]:
            errors.append(f"`{path}` `{name}`: {path} defines no {name}")
    return errors


def path_errors(text, root=ROOT):
    """One line per repository path in backticks that does not exist."""
    return [f"`{p}`: no such file or folder" for p in PATH.findall(text)
            if not os.path.exists(os.path.join(root, p))]


def read_doc():
    with open(DOC, encoding="utf-8") as f:
        return f.read()


def test_every_citation_names_a_definition_in_its_file():
    text = read_doc()
    cited = CITATION.findall(text)
    assert len(cited) >= 40, f"only {len(cited)} citations found: has their form changed?"
    assert citation_errors(text) == []


def test_every_path_the_walkthrough_names_exists():
    assert path_errors(read_doc()) == []


def test_a_wrong_citation_is_caught():
    good = "`minirate/layers/lif/rate.py` `lif_rate_backward`"
    assert citation_errors(good) == []
    assert citation_errors("`minirate/methods/bptt.py` `BPTT._step_single`") == []
    for wrong in ("`minirate/layers/lif/rate.py` `lif_rate_backwards`",      # misspelt name
                  "`minirate/layers/lif/rates.py` `lif_rate_backward`",      # no such file
                  "`minirate/layers/lif/neuron.py` `lif_rate_backward`",     # another file's
                  "`minirate/layers/lif/__init__.py` `lif_step`",            # only imported
                  "`minirate/methods/bptt.py` `BPTT.no_such_method`"):
        assert citation_errors(wrong) != [], wrong
    assert path_errors("`minirate/methods/no_such_method.py`") != []


def test_every_embedded_figure_exists_in_docs_figures_and_is_small():
    figures = FIGURE.findall(read_doc())
    assert len(figures) >= 3
    for ref in figures:
        full = os.path.normpath(os.path.join(os.path.dirname(DOC), ref))
        assert os.path.dirname(full) == FIGURES, f"{ref} is not in docs/figures/"
        assert os.path.isfile(full), f"{ref} is missing: run {REMAKE}"
        assert os.path.getsize(full) <= MAX_PNG_BYTES, f"{ref} is larger than it needs to be"


def test_the_remaking_command_is_stated_in_the_walkthrough_and_the_script():
    with open(SCRIPT, encoding="utf-8") as f:
        docstring = ast.get_docstring(ast.parse(f.read()))
    assert REMAKE in read_doc()
    assert REMAKE in docstring


def test_the_figure_script_runs_quick(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               MPLBACKEND="Agg")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, SCRIPT, "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=str(tmp_path), timeout=120, env=env)
    took = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("lif_neuron.png", "memory_time.png", "gradients.png"):
        path = tmp_path / name
        assert path.is_file() and 0 < path.stat().st_size <= MAX_PNG_BYTES, name
    assert "cos" in done.stdout and "done in" in done.stdout
    assert took < 30, f"--quick took {took:.0f} s"
