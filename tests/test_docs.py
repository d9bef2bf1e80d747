"""README.md and docs/*.md stay true to the code, so the pages cannot drift from it.

- Every ```python block runs, in a temporary folder with no network, after the README's quick run
  has written `runs/quick` there (an example may read its checkpoint). A block that cannot run on
  a CPU-only machine without a network is preceded by the line
  `<!-- docs-test: not run: REASON -->`; such blocks must give their reason and stay few.
- Every command in a ```bash block (and every indented command line, `    python ...`) must match
  one of the rules in `check_command`: `python train.py ...` is parsed by train.py's own parser
  and cross-checks (nothing trains), `python -m minirate.study ...` and
  `python -m minirate.data.events ...` by theirs, a `python -c` one-liner runs in the temporary
  folder, `python PATH.py` and `bash PATH.sh` name files that exist, `pip install` names a
  requirements file that exists or a package listed in PIP_PACKAGES, `mpirun -n N` and
  `VAR=value` prefixes are stripped and the rest checked. A command no rule knows fails: a new
  kind of command needs a rule here.
- The README's quick run runs for real, in the temporary folder, and prints the lines the README
  shows (numbers aside); its command and its test command are the ones `.ci/run` runs.
- Every relative link points at a file that exists, and at a heading that exists when it names
  one (`page.md#heading`).
Blocks without a language (or in TEXT) are output, listings or data, and are not run.
"""
import contextlib
import glob
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass

import pytest

from tests.conftest import ROOT

PAGES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
NOT_RUN = re.compile(r"^\s*<!--\s*docs-test:\s*not run:(.*?)-->\s*$")
MAX_NOT_RUN = 2            # blocks marked not run, over all pages
FENCE = re.compile(r"^(\s*)(`{3,})\s*([\w+-]*)\s*$")
INDENTED_COMMAND = re.compile(r"^ {4,}((?:python|mpirun|pip) .*)$")
SHELL = ("bash", "sh", "shell", "console")      # blocks whose commands are checked
TEXT = ("", "text", "toml", "json", "csv")      # output, listings and data: not run
PIP_PACKAGES = {           # packages a page may tell the reader to install by name, and why
    "cupy-cuda12x": "CuPy for CUDA 12 (docs/GPU.md)",
    "cupy-cuda13x": "CuPy for CUDA 13 (docs/GPU.md)",
    "torch": "PyTorch, benchmarks/compare_torch.py only (docs/STUDIES.md)",
}
# Offline: any network connection in a python block fails with this message.
PRELUDE = """
import socket, sys
def _offline(*args, **kwargs):
    raise OSError("docs examples run offline: no network connection allowed")
socket.socket.connect = socket.socket.connect_ex = _offline
socket.create_connection = _offline
sys.path.insert(0, {root!r})
path, name = sys.argv[1], sys.argv[2]
with open(path, encoding="utf-8") as f:
    source = f.read()
exec(compile(source, name, "exec"), {{"__name__": "__main__"}})
"""


@dataclass
class Block:
    page: str       # path relative to ROOT
    line: int       # 1-based line of the first line of content
    lang: str
    text: str
    not_run: str    # the reason given by a not-run marker, "" if none ("?" if empty)


def rel(path):
    return os.path.relpath(path, ROOT)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def blocks(path):
    """The fenced code blocks of a page, their indentation removed."""
    lines = read(path).splitlines()
    found, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, ticks, lang = len(m.group(1)), m.group(2), m.group(3)
        prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = NOT_RUN.match(prev)
        body, j = [], i + 1
        while j < len(lines) and not (lines[j].strip().startswith(ticks)
                                      and not lines[j].strip().strip("`")):
            line = lines[j]
            body.append(line[min(indent, len(line) - len(line.lstrip())):])   # list indent off
            j += 1
        found.append(Block(rel(path), i + 2, lang, "\n".join(body) + "\n",
                           (marker.group(1).strip() or "?") if marker else ""))
        i = j + 1
    return found


def outside_fences(path):
    """(line number, line) of every line of a page that is not inside a fenced block."""
    inside, ticks = False, ""
    for n, line in enumerate(read(path).splitlines(), 1):
        m = FENCE.match(line)
        if m and not inside:
            inside, ticks = True, m.group(2)
            continue
        if inside and line.strip().startswith(ticks) and not line.strip().strip("`"):
            inside = False
            continue
        if not inside:
            yield n, line


def commands(text, first_line):
    """(line, argv) of each shell command in `text`: continuation lines joined, comments dropped,
    `a && b` split."""
    out, pending, start = [], "", None
    for n, line in enumerate(text.splitlines(), first_line):
        if start is None:
            start = n
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        words = shlex.split(pending + line, comments=True)
        pending, at = "", start
        start = None
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            if words[:cut]:
                out.append((at, words[:cut]))
            words = words[cut + 1:]
    return out


def all_blocks():
    return [b for page in PAGES for b in blocks(page)]


def all_commands():
    found = []
    for b in all_blocks():
        if b.lang in SHELL:
            found += [(f"{b.page}:{n}", argv) for n, argv in commands(b.text, b.line)]
    for page in PAGES:
        for n, line in outside_fences(page):
            m = INDENTED_COMMAND.match(line)
            if m:
                found += [(f"{rel(page)}:{n}", argv) for _, argv in commands(m.group(1), n)]
    return found


# -- the rules for commands ----------------------------------------------------------------------
def _parse(parse_args, argv, where, what):
    """Run a parser on argv; fail with the command and the parser's message on a bad option."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return parse_args(argv)
    except SystemExit as e:
        if e.code == 0 and ("--list-recipes" in argv or "--help" in argv or "-h" in argv):
            return None
        pytest.fail(f"{where}: {what} {shlex.join(argv)}: {err.getvalue().strip()} "
                    f"(exit status {e.code})")


def check_train(argv, where):
    import train
    cfg = _parse(train.parse_args, argv, where, "python train.py")
    if cfg is not None:
        assert train.option_conflict(cfg) is None, (
            f"{where}: python train.py {shlex.join(argv)}: {train.option_conflict(cfg)}")


def check_study(argv, where):
    from minirate.study.__main__ import parse_args
    _parse(parse_args, argv, where, "python -m minirate.study")


class _Parsed(Exception):
    pass


def check_events(argv, where):
    """minirate.data.events builds its parser inside main(): give main a parser whose
    parse_args stops right after parsing, so nothing is downloaded or converted."""
    import minirate.data.events.__main__ as events_main
    real = events_main.ArgumentParser

    class ParseOnly(real):
        def parse_args(self, args=None, namespace=None):
            raise _Parsed(super().parse_args(args, namespace))

    events_main.ArgumentParser = ParseOnly
    try:
        _parse(events_main.main, argv, where, "python -m minirate.data.events")
        pytest.fail(f"{where}: python -m minirate.data.events did not parse its command line")
    except _Parsed:
        pass
    finally:
        events_main.ArgumentParser = real


def check_file(path, where, what):
    assert os.path.isfile(os.path.join(ROOT, path)), f"{where}: {what} {path}: no such file"


def check_command(argv, where, tmp_path):
    """The rule for one command; a command no rule knows fails."""
    while argv and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]):     # VAR=value prefixes
        argv = argv[1:]
    if argv[:1] == ["mpirun"]:
        assert argv[1:2] == ["-n"] and argv[2:3] and argv[2].isdigit(), f"{where}: {argv}"
        argv = argv[3:]
    head, rest = argv[:1], argv[1:]
    if head in (["."], ["source"]):
        assert rest == [".venv/bin/activate"], f"{where}: only the venv's activate is sourced"
        return
    if head == ["bash"]:
        return check_file(rest[0], where, "bash")
    if head == ["pip"] or argv[:3] == ["python", "-m", "pip"]:
        rest = rest if head == ["pip"] else argv[3:]
        assert rest[:1] == ["install"], f"{where}: pip {rest}: only pip install is known"
        if rest[1:2] == ["-r"]:
            return check_file(rest[2], where, "pip install -r")
        for name in rest[1:]:
            base = re.split(r"[=<>\[]", name)[0]
            assert base in PIP_PACKAGES, (f"{where}: pip install {name}: not a package the docs "
                                          f"install by name (PIP_PACKAGES in tests/test_docs.py)")
        return
    assert head == ["python"], f"{where}: no rule for the command {shlex.join(argv)}"
    if rest[:1] == ["train.py"]:
        return check_train(rest[1:], where)
    if rest[:2] == ["-m", "minirate.study"]:
        return check_study(rest[2:], where)
    if rest[:2] == ["-m", "minirate.data.events"]:
        return check_events(rest[2:], where)
    if rest[:2] == ["-m", "tests.strict_run"]:
        from tests.strict_cupy import register
        register()                     # the device "strict", as the launcher registers it
        return check_command(["python"] + rest[2:], where, tmp_path)
    if rest[:2] == ["-m", "pytest"]:
        return                         # the test command itself (checked against .ci/run below)
    if rest[:2] == ["-m", "venv"]:
        assert len(rest) == 3, f"{where}: python -m venv takes one folder"
        return
    if rest[:1] == ["-c"]:             # a one-line program: it runs, offline, in a temporary folder
        return run_python(rest[1], f"{where} (python -c)", tmp_path)
    if rest and rest[0].endswith(".py"):
        return check_file(rest[0], where, "python")
    pytest.fail(f"{where}: no rule for the command {shlex.join(argv)}")


def run_python(source, name, cwd):
    path = os.path.join(str(cwd), ".docs_example.py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(source)
    env = dict(os.environ, PYTHONPATH=ROOT, MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, "-c", PRELUDE.format(root=ROOT), path, name], cwd=str(cwd),
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{name} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r.stdout


# -- the README's quick run ---------------------------------------------------------------------
def readme_section(title):
    """The fenced blocks of the README between the heading `## title` and the next `## `."""
    text = read(PAGES[0])
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    first = text[:start].count("\n") + 2
    last = text[:end].count("\n") + 1 if end >= 0 else 10 ** 9
    return [b for b in blocks(PAGES[0]) if first <= b.line <= last]


def quick_run_command():
    """The README's set-up train.py command, and the output block shown after it."""
    set_up = readme_section("Set up")
    for i, b in enumerate(set_up):
        for _, argv in commands(b.text, b.line) if b.lang == "bash" else []:
            if argv[:2] == ["python", "train.py"]:
                shown = next(o for o in set_up[i + 1:] if o.lang == "")
                return argv, shown.text
    pytest.fail("README.md: no `python train.py` command under ## Set up")


def readme_test_command():
    found = [argv for b in readme_section("Set up") if b.lang == "bash"
             for _, argv in commands(b.text, b.line) if argv[:3] == ["python", "-m", "pytest"]]
    assert len(found) == 1, f"README.md ## Set up gives {len(found)} test commands, not one"
    return found[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A temporary folder in which the README's quick run has run: (folder, its stdout)."""
    work = tmp_path_factory.mktemp("docs")
    argv, _ = quick_run_command()
    argv = [sys.executable, os.path.join(ROOT, "train.py")] + argv[2:]
    r = subprocess.run(argv, cwd=str(work), capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    return work, r


def test_quick_run_runs_and_prints_what_the_readme_shows(workdir):
    work, r = workdir
    assert r.returncode == 0, f"the README's quick run failed:\n{r.stderr[-3000:]}"
    argv, shown = quick_run_command()
    out = r.stdout.splitlines()
    for line in shown.splitlines():
        lead = re.match(r"^[^\d:]*:?", line).group(0)          # "model:", "epoch", "done:"
        assert any(o.startswith(lead) for o in out), (
            f"the quick run printed no line like the README's {line!r}:\n{r.stdout}")
        if line.startswith("model:"):                           # deterministic: exactly
            assert line in out, f"the README shows {line!r}, the run printed:\n{r.stdout}"
        if line.startswith("done:"):
            assert out[-1].endswith(line.split(";")[-1]), out[-1]
    out_dir = argv[argv.index("--out") + 1]
    assert os.path.isfile(os.path.join(str(work), out_dir, "last.npz"))


def test_ci_runs_the_readme_commands():
    ci = read(os.path.join(ROOT, ".ci", "run"))
    ci_commands = [argv for _, argv in commands(ci, 1)]
    quick, _ = quick_run_command()
    ci_quick = [argv for argv in ci_commands if argv[:2] == ["python", "train.py"]]
    assert ci_quick, ".ci/run runs no quick run"
    assert [w for w in ci_quick[0] if w != "--no-progress"] == quick, (
        f".ci/run's quick run {ci_quick[0]} is not the README's {quick} (--no-progress aside)")
    assert readme_test_command() in ci_commands, ".ci/run does not run the README's test command"


# -- every example --------------------------------------------------------------------------------
PYTHON_BLOCKS = [b for b in all_blocks() if b.lang == "python"]
COMMANDS = all_commands()


@pytest.mark.parametrize("block", [b for b in PYTHON_BLOCKS if not b.not_run],
                         ids=lambda b: f"{b.page}:{b.line}")
def test_python_block_runs(block, workdir):
    work, _ = workdir
    # pad so that a traceback's line numbers are the page's own
    run_python("\n" * (block.line - 1) + block.text, block.page, work)


def test_blocks_marked_not_run_are_few_and_say_why():
    marked = [b for b in all_blocks() if b.not_run]
    for b in marked:
        assert b.not_run != "?", f"{b.page}:{b.line}: a not-run marker must say why"
        assert b.lang == "python", f"{b.page}:{b.line}: only python blocks are run, so only " \
                                   f"they can be marked not run"
    assert len(marked) <= MAX_NOT_RUN, (
        "blocks not run: " + "; ".join(f"{b.page}:{b.line} ({b.not_run})" for b in marked))


def test_every_page_has_its_examples_found():
    """The parsers above see the examples: a page's ```bash and ```python blocks are found."""
    assert COMMANDS and PYTHON_BLOCKS
    langs = {b.lang for b in all_blocks()}
    assert langs <= {"python", *SHELL, *TEXT}, f"blocks in a language no rule covers: {langs}"


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_command_is_valid(where, argv, tmp_path):
    assert "..." not in argv, f"{where}: a placeholder `...`: write a runnable command"
    check_command(argv, where, tmp_path)


# -- links ----------------------------------------------------------------------------------------
LINK = re.compile(r"!?\[([^\]]*)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def slug(heading):
    """GitHub's anchor for a heading: its text without markup, lower case, punctuation except
    - and _ removed, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path):
    seen, found = {}, set()
    for _, line in outside_fences(path):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            s = slug(m.group(1))
            found.add(s if s not in seen else f"{s}-{seen[s]}")
            seen[s] = seen.get(s, 0) + 1
    return found


def links(path):
    for n, line in outside_fences(path):
        for m in LINK.finditer(re.sub(r"`[^`]*`", "", line)):
            yield n, m.group(2)


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_resolve(page):
    bad = []
    for n, target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):          # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(os.path.dirname(page), file)) if file else page
        if not os.path.exists(full):
            bad.append(f"{rel(page)}:{n}: {target}: no such file")
        elif anchor and full.endswith(".md") and anchor not in anchors(full):
            bad.append(f"{rel(page)}:{n}: {target}: {rel(full)} has no heading #{anchor}")
    assert not bad, "\n".join(bad)


def test_slug_follows_github():
    assert slug("The one run: `benchmarks/gpu_check.sh`") == "the-one-run-benchmarksgpu_checksh"
    assert slug("SLTT (`--method sltt [--sltt-k K]`)") == "sltt---method-sltt---sltt-k-k"
    assert slug("Exact gradients in less memory") == "exact-gradients-in-less-memory"
