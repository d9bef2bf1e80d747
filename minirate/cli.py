"""Command-line pieces shared by train.py and `python -m minirate.study`.

A malformed command line is one line on stderr and exit status 2, never a usage dump or a
traceback.
"""
import argparse
import math


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + error
        # Under mpirun every rank parses the same command line and meets the same error: rank 0
        # alone says it (the launcher ends the run when any rank exits non-zero).
        from .distributed import launched_rank, launched_size
        if launched_size() > 1 and launched_rank() != 0:
            self.exit(2)
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`(default: X)` after each option's help, once: not where the help already states its
    default, and an empty default shown as '' rather than as nothing."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default:" in text or action.default is argparse.SUPPRESS:
            return text
        if action.default == "":
            return text + " (default: '')"
        return super()._get_help_string(action)


def int_at_least(lowest):
    """An argparse type: an integer >= `lowest`."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lowest:
            raise argparse.ArgumentTypeError(f"must be at least {lowest}, got {v}")
        return v
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)


def finite_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return v


def positive_float(text):
    v = finite_float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return v


def nonnegative_float(text):
    v = finite_float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def at_least_one(text):
    """A number >= 1 (a time constant in steps)."""
    v = finite_float(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return v


def unit_interval(text):
    """A number in [0, 1]."""
    v = finite_float(text)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return v


def below_one(text):
    """A number in [0, 1): a fraction that must forget, like SGD momentum."""
    v = finite_float(text)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text}")
    return v


class UsageError(Exception):
    """A problem with what the user asked for; reported as one line, exit status 1."""
