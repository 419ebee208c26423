"""The ``darkfield-nb`` command line: thin front ends over the library.

Each subcommand is one small function ``_cmd_<name>(args) -> int`` (``make-data`` is
``_cmd_make_data``), found by :func:`main` in this package's namespace; heavy imports happen
inside it so ``darkfield-nb info`` stays quick. Run ``darkfield-nb <command> --help`` for
options. Modules: :mod:`.parser` (the argument parser), :mod:`.data` (info, validate,
make-data), :mod:`.train`, :mod:`.evaluate`, :mod:`.predict`, :mod:`.calibrate`, :mod:`.level`
(``fit-level``); ``ablate``
has its own parser in :mod:`darkfield_nb.ablation`.

Errors the user can act on (a missing or unreadable file, a data set problem, a checkpoint that
cannot be used, an output that cannot be written, a full disk, a diverging run) are printed by
:func:`main` as one line ``darkfield-nb <command>: error: <message>`` (the message names the file
and the problem) with exit status 2, never a traceback; warnings as ``darkfield-nb <command>:
warning: <message>``. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
import warnings

# the commands, looked up by name in main(); with the helpers of the old single module
from darkfield_nb.cli.calibrate import _cmd_calibrate as _cmd_calibrate
from darkfield_nb.cli.data import _cmd_info as _cmd_info
from darkfield_nb.cli.data import _cmd_make_data as _cmd_make_data
from darkfield_nb.cli.data import _cmd_validate as _cmd_validate
from darkfield_nb.cli.evaluate import _cmd_evaluate as _cmd_evaluate
from darkfield_nb.cli.evaluate import _load_model as _load_model
from darkfield_nb.cli.level import _cmd_fit_level as _cmd_fit_level
from darkfield_nb.cli.parser import build_parser
from darkfield_nb.cli.predict import _cmd_predict as _cmd_predict
from darkfield_nb.cli.predict import _print_warning as _print_warning
from darkfield_nb.cli.train import _cmd_train as _cmd_train
from darkfield_nb.cli.train import _has_training_flags as _has_training_flags
from darkfield_nb.cli.train import _train_config as _train_config

__all__ = ["build_parser", "main"]


def _expected_errors() -> tuple[type[BaseException], ...]:
    """The exceptions :func:`main` reports in one line: the user's input or environment is at
    fault (OSError covers FileNotFoundError, PermissionError and io.WriteError; ValueError covers
    ImageReadError, ManifestError, EmptySplitError, CheckpointError ...)."""
    kinds: list[type[BaseException]] = [OSError, ValueError, ImportError]
    if "darkfield_nb.train.step" in sys.modules:  # imported only by commands that train
        kinds.append(sys.modules["darkfield_nb.train.step"].NonFiniteLossError)
    return tuple(kinds)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``darkfield-nb`` console script.

    Expected errors (see :func:`_expected_errors`) are printed on stderr as one line,
    ``darkfield-nb <command>: error: <message>``, and give exit status 2; Ctrl-C gives one line
    and status 130; warnings are printed as ``darkfield-nb <command>: warning: <message>``.
    Any other exception is a bug: it propagates with its full traceback.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["ablate"]:  # its own parser: --grid GRID.yaml --out DIR [--jobs N] [--dry-run]
        from darkfield_nb.ablation import main as ablate_main

        return ablate_main(argv[1:])
    args = build_parser().parse_args(argv)
    prefix = f"darkfield-nb {args.command}"
    command = globals()[f"_cmd_{args.command.replace('-', '_')}"]

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"{prefix}: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        try:
            return int(command(args) or 0)
        except KeyboardInterrupt:
            print(f"{prefix}: interrupted", file=sys.stderr)
            return 130
        except _expected_errors() as err:
            text = str(err) or type(err).__name__
            if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
                text = f"{err.filename}: {text}"
            print(f"{prefix}: error: {text}", file=sys.stderr)
            return 2
