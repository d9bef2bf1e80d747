"""Paper recipes: the train.py options of published runs, one TOML file per recipe.

Each `<name>.toml` beside this file holds

    paper = "..."               # the paper the recipe reproduces
    reported_accuracy = "..."   # the paper's top-1 for it, "" where not confirmed
    unconfirmed = [...]         # what the authors' code and paper did not settle
    missing = [...]             # (optional) what the authors did that no option expresses
    [requires]                  # (optional) option dest -> why the command line must give it
    [options]                   # train.py option dest -> value
    lr = 0.1  # <repository> <file>:<line> (...)

and every value line carries a comment naming the authors' file and line it comes from, or
`# chosen: ...` where their code gives none. The lines refer to these commits:

    Tab-ct/rate-based-backpropagation   3c70ee98d56fc54bde9a94eab431ad20f1fca989  (rate-BP)
    pkuxmq/OTTT-SNN                     c15d5da05eea0c48e1fa837a4f8073297006d93f  (OTTT)
    qymeng94/SLTT                       0758ecd1b7ba965769c9f1e8b1801ef26cc147b1  (SLTT)

Guo et al. 2023 (temporally-truncated local BPTT, `ttl-*`) has no public code: its recipe is
built from the paper and marks every value as chosen.

    from minirate import recipes
    recipes.names()                       # sorted recipe names
    recipes.load("sltt-cifar10-preactresnet18")["options"]
"""
import difflib
try:
    import tomllib                      # Python 3.11 on
except ImportError:                     # before: the same parser, as the tomli package
    import tomli as tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIRED = ("paper", "reported_accuracy", "unconfirmed", "options")   # top-level keys of a file
SUMMARY = ("dataset", "arch", "T", "epochs", "batch_size")             # lifted from [options]


class RecipeError(ValueError):
    """An unknown recipe name, or a recipe file without the schema above."""


def names():
    """Every recipe name (the TOML file names without .toml), sorted."""
    return sorted(p.stem for p in HERE.glob("*.toml"))


def load(name):
    """The recipe `name` as a dict: name, paper, dataset, arch, T, epochs, batch_size,
    reported_accuracy, unconfirmed, missing, requires (dest -> why the command line must give
    it), options (train.py dest -> value)."""
    known = names()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise RecipeError(f"unknown recipe {name!r}{hint} (python train.py --list-recipes "
                          f"lists them all)")
    path = HERE / f"{name}.toml"
    with open(path, "rb") as f:
        data = tomllib.load(f)
    lacking = [k for k in REQUIRED if k not in data]
    if lacking:
        raise RecipeError(f"recipe {path.name} lacks {', '.join(lacking)}")
    options = dict(data["options"])
    lacking = [k for k in SUMMARY if k not in options]
    if lacking:
        raise RecipeError(f"recipe {path.name}: [options] lacks {', '.join(lacking)}")
    recipe = {"name": name, "paper": data["paper"]}
    recipe.update({k: options[k] for k in SUMMARY})
    recipe.update(reported_accuracy=data["reported_accuracy"],
                  unconfirmed=list(data["unconfirmed"]), missing=list(data.get("missing", [])),
                  requires=dict(data.get("requires", {})), options=options)
    return recipe


def table():
    """One row per recipe for a --list-recipes printout (str values, in column order)."""
    rows = []
    for name in names():
        r = load(name)
        authors, *_, venue = r["paper"].split(", ")
        rows.append({"name": name, "paper": f"{authors}, {venue}",
                     "data set": r["dataset"], "architecture": r["arch"], "T": str(r["T"]),
                     "epochs": str(r["epochs"]), "batch": str(r["batch_size"]),
                     "reported accuracy": r["reported_accuracy"] or "-",
                     "unconfirmed": str(len(r["unconfirmed"])), "missing": str(len(r["missing"]))})
    return rows


def listing():
    """The --list-recipes printout: one aligned line per recipe under a header."""
    rows = table()
    columns = list(rows[0])
    width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(width[c]) for c in columns),
             "  ".join("-" * width[c] for c in columns)]
    lines += ["  ".join(r[c].ljust(width[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines) + (
        "\n\n'unconfirmed' and 'missing' count what each recipe file lists: values the authors' "
        "code and paper do not settle, and what they did that no option expresses.")


# options that set the same thing: a command line giving one drops the recipe's other
SAME_SETTING = {"decay": "tau", "tau": "decay"}


def command_line(name, given=()):
    """The recipe's options as train.py words (`--lr 0.1`, `--no-flip`), leaving out those in
    `given` (option dests the command line sets itself, which win) and their SAME_SETTING."""
    skip = set(given) | {SAME_SETTING[g] for g in given if g in SAME_SETTING}
    words = []
    for key, value in load(name)["options"].items():
        flag = "--" + key.replace("_", "-")
        if key in skip or value is None:
            continue
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            words += [flag, ",".join(map(str, value))]
        else:
            words += [flag, str(value)]
    return words
