"""The ``hierdiff`` command line.

Subcommands are registered in :data:`_COMMANDS` as ``name -> (help, add_arguments, run)``.
``hierdiff generate`` lives in ``hierdiff_diffusers`` and is imported only when its parser is built
(that module loads diffusers only when it runs). Bad input prints one line
``hierdiff: error: ...`` on stderr and exits with code 2; files are written only when
everything succeeded, through a temporary file renamed into place.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .schedule import Budget
from .tree import METHODS

GENERATE_HELP = (
    "generate one image per prompt, sharing steps, with a diffusers pipeline folder (--pipeline DIR: SD 1.x, "
    "SDXL, SD3, Flux, PixArt-Sigma) or Kandinsky 2.2 (--model DIR, or --prior and --decoder); resumable"
)


class CommandError(Exception):
    """Bad input or usage: reported as one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so every error is one line."""

    def error(self, message: str):  # type: ignore[override]
        raise CommandError(message)


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


# ----- hierdiff plan -----
def _add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompts", metavar="PROMPTS.txt", help="UTF-8 text file, one prompt per line")
    parser.add_argument("--steps", type=_integer, default=40, help="sampling steps K (default 40)")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--tau", type=_number, help="threshold at the first step (0 = independent sampling)")
    budget.add_argument(
        "--target-saving", type=_number, help="fraction of model evaluations to save, in [0, 1)"
    )
    budget.add_argument(
        "--evaluations-per-image", type=_number, help="average model evaluations per image, in [1, steps]"
    )
    parser.add_argument(
        "--embeddings",
        metavar="E.npy",
        help="precomputed (N, D) float array in prompt order (skips the encoder)",
    )
    parser.add_argument("--linkage", choices=METHODS, default="ward", help="linkage method (default ward)")
    parser.add_argument("--metric", default="cosine", help="scipy distance metric (default cosine)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--dendrogram", metavar="OUT.png", help="write a picture of the plan")


def _load_embeddings(path: str, prompts: list[str]) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"embeddings file {path!r} does not exist")
    _check_npy_size(p, path)
    try:
        E = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"embeddings file {path!r} is not a readable .npy array ({exc})") from None
    if not isinstance(E, np.ndarray):
        raise ValueError(f"embeddings file {path!r} holds several arrays; give one (N, D) .npy array")
    from .embed import validate_embeddings

    return validate_embeddings(E, prompts=prompts)


_NPY_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def _check_npy_size(p: Path, path: str) -> None:
    """Refuse a .npy whose header promises more data than the file holds, before numpy allocates it."""
    try:
        with p.open("rb") as f:
            version = np.lib.format.read_magic(f)
            reader = _NPY_HEADER_READERS.get(version)
            if reader is None:
                return  # a newer header layout: numpy's own loader checks it
            shape, _, dtype = reader(f)
            offset = f.tell()
    except (OSError, ValueError) as exc:
        raise ValueError(f"embeddings file {path!r} is not a readable .npy array ({exc})") from None
    needed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if needed > p.stat().st_size - offset:
        raise ValueError(
            f"embeddings file {path!r} is cut short: its header declares shape {tuple(shape)} "
            f"({needed:,} bytes) but it holds {p.stat().st_size - offset:,}"
        )


def _check_output_png(path: str) -> Path:
    """The dendrogram path, checked before any slow work: a .png file name in a writable folder."""
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise ValueError(f"dendrogram file {path!r} must end in .png")
    if out.is_dir():
        raise ValueError(f"dendrogram path {path!r} is a folder; give a file name ending in .png")
    if not out.parent.is_dir():
        raise ValueError(f"dendrogram folder {str(out.parent)!r} does not exist")
    try:  # a real probe: permissions, read-only mounts and special file systems all answer here
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".probe", dir=out.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"dendrogram file {path!r} cannot be written there: {exc.strerror or exc}") from None
    return out


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, renamed into place only on success."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _run_plan(args: argparse.Namespace) -> int:
    from .embed import encode_prompts
    from .prompts import read_prompts
    from .report import render_dendrogram, savings_table, summary_line
    from .schedule import plan
    from .tree import build_tree, check_metric

    out_png = None if args.dendrogram is None else _check_output_png(args.dendrogram)
    prompts = read_prompts(args.prompts)
    # Bad input is rejected before the encoder's slow start.
    budget = Budget.from_options(args.tau, args.target_saving, args.evaluations_per_image).check(args.steps)
    check_metric(args.metric)
    if args.embeddings is not None:
        embeddings = _load_embeddings(args.embeddings, prompts)
    else:
        embeddings = encode_prompts(prompts)
    tree = build_tree(embeddings, method=args.linkage, metric=args.metric, prompts=prompts)
    schedule = plan(tree, args.steps, budget)

    if out_png is not None:
        image = render_dendrogram(schedule)
        try:
            _write_atomically(out_png, lambda tmp: image.save(tmp, format="PNG"))
        except OSError as exc:
            raise ValueError(f"dendrogram file {args.dendrogram!r} could not be written: {exc}") from None
    if args.json:
        print(json.dumps(schedule.to_dict(), allow_nan=False))
    else:
        duplicates = len(prompts) - len(set(prompts))
        print(summary_line(schedule))
        print(f"tau = {schedule.tau:.6g} ({_budget_text(schedule.budget)}), {tree.method} linkage over "
              f"{tree.metric} distances{'' if tree.exact else ', approximate bucketed tree'}")
        if duplicates:
            print(f"{duplicates} duplicate prompt(s) share every step with their twin")
        print()
        print(savings_table(schedule))
        if out_png is not None:
            print(f"\ndendrogram written to {out_png}")
    return 0


def _budget_text(budget: Budget | None) -> str:
    if budget is None or budget.mode == "tau":
        return "given"
    return f"smallest tau meeting {budget.describe()}"


def _add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    from hierdiff_diffusers.generate import add_generate_arguments

    add_generate_arguments(parser)


def _run_generate(args: argparse.Namespace) -> int:
    from hierdiff_diffusers.generate import run_generate

    return run_generate(args)


_Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
_COMMANDS: dict[str, _Command] = {
    "plan": (
        "plan hierarchical sampling for a prompt set and report the saving",
        _add_plan_arguments,
        _run_plan,
    ),
    "generate": (GENERATE_HELP, _add_generate_arguments, _run_generate),
}
"""Subcommands: name -> (help, add_arguments(parser), run(args) -> exit code)."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hierdiff", description="Hierarchical shared-trunk sampling for sets of prompts.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (help_text, add_arguments, _) in _COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hierdiff`` console script; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        return _COMMANDS[args.command][2](args)
    except (CommandError, ValueError) as exc:
        message = " ".join(str(exc).split())  # one line, whatever the source
        print(f"hierdiff: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
