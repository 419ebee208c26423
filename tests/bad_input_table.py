"""Run every kind of bad input against every entry point and write what a user sees (issue 14).

    python tests/bad_input_table.py [OUT.md [BEFORE.md]]   (default OUT: bad_input_table.md)

With BEFORE.md (this script's table from older code, e.g. run with ``PYTHONPATH`` pointing at a
checkout of an earlier commit) a last column shows what that code printed, where it differs.

Each row builds one bad input in a fresh temporary folder, feeds it to one entry point
(``read_image``, ``validate``, ``train``, ``predict``, ``evaluate``, ``make-data``; the commands
through ``darkfield_nb.cli.main``, so the message is exactly what the command line prints) and
records the exit status and the first lines on stderr. Faults of the machine are injected with
``pytest.MonkeyPatch`` (a full disk, a folder that refuses files: runs as root, where ``chmod``
does not stop a write). An exception escaping ``main`` is recorded as ``TRACEBACK``: a kind not
handled. Paths are shown relative to the temporary folder (``<tmp>``).

The builders are those of ``tests/test_bad_input.py``. This is a report, not a test: the
assertions live in the test files; the table shows every message side by side.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import test_bad_input as tb  # noqa: E402

from darkfield_nb.io import read_image, write_image  # noqa: E402

Row = tuple[str, str, str, Callable[[Path, pytest.MonkeyPatch], tuple[str, str]]]
#: Rows of predict: its per-file checks, completion keys and output sets belong to another
#: branch (issue 14 items 1, 3, 6, 7, 12, 13 on the predict side); shown as predict is now.
PREDICT_NOTE = "predict branch"


# ------------------------------------------------------------------ running one entry point


def _call(fn: Callable[[], object]) -> tuple[str, str]:
    """(outcome, message) of a library call: its error, else its warnings, else ok."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fn()
        except (ValueError, OSError, ImportError) as exc:
            return "error", str(exc)
        except Exception as exc:
            return "TRACEBACK", f"{type(exc).__name__}: {exc}"
    if caught:
        return "warning", " | ".join(str(w.message) for w in caught)
    return "ok", ""


def _cli(argv: list) -> tuple[str, str]:
    """(exit status, stderr lines joined with ' / ') of ``darkfield-nb argv``."""
    from darkfield_nb.cli import main

    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main([str(a) for a in argv])
    except BaseException as exc:  # noqa: BLE001 - an escaping exception is the finding
        return "TRACEBACK", f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    lines = [x for x in err.getvalue().splitlines() if x.strip()]
    shown = lines or [x for x in out.getvalue().splitlines() if x.strip()][-1:]
    return f"exit {code}", " / ".join(shown[:4]) + (" / ..." if len(shown) > 4 else "")


# ------------------------------------------------------------------ bad files


def _rgb(folder: Path, stem: str) -> Path:
    from PIL import Image

    path = folder / f"{stem}.png"
    rgb = np.stack([tb._ramp().astype(np.uint8)] * 3, axis=-1)
    rgb[..., 0] = 200
    Image.fromarray(rgb, "RGB").save(path)
    return path


def _npy(array: np.ndarray, **kw) -> Callable[[Path, str], Path]:
    def make(folder: Path, stem: str) -> Path:
        path = folder / f"{stem}.npy"
        np.save(path, array, **kw)
        return path

    return make


def _bytes(suffix: str, data: bytes | Callable[[], bytes]) -> Callable[[Path, str], Path]:
    def make(folder: Path, stem: str) -> Path:
        path = folder / f"{stem}{suffix}"
        path.write_bytes(data() if callable(data) else data)
        return path

    return make


def _png(array: np.ndarray) -> Callable[[Path, str], Path]:
    def make(folder: Path, stem: str) -> Path:
        write_image(folder / f"{stem}.png", array)
        return folder / f"{stem}.png"

    return make


def _tiff_bomb(folder: Path, stem: str) -> Path:
    path = tb._tiff_bomb(folder)
    return path.rename(folder / f"{stem}.tif")


def _with_nan() -> np.ndarray:
    a = np.ones((24, 24))
    a[3, 4] = np.nan
    return a


def _with_inf() -> np.ndarray:
    a = tb._ramp().astype(np.float32)
    a[0, 0] = np.inf
    return a


#: kind -> (issue item, builder writing the bad file as folder/stem.*; None: no file at all)
FILE_KINDS: dict[str, tuple[str, Callable[[Path, str], Path] | None]] = {
    "missing file": ("", None),
    "wrong extension (.bmp)": ("", _bytes(".bmp", b"BM\x00\x00")),
    "zero-byte file": ("", _bytes(".png", b"")),
    "truncated PNG": ("", _bytes(".png", lambda: tb._png_header(64, 64)[:40])),
    "text file named .png": ("", _bytes(".png", b"this is not an image\n")),
    "RGB PNG": ("", _rgb),
    "16 x 16 px image": ("6", _png(tb._ramp((16, 16)))),
    "constant image": ("3", _png(np.full((24, 24), 7, np.uint16))),
    "NaN pixel (.npy)": ("", _npy(_with_nan())),
    "Inf pixel (.npy)": ("", _npy(_with_inf())),
    "float64 beyond float32 (.npy)": ("8", _npy(np.where(np.eye(24) > 0, -1e300, 1.0))),
    "PNG bomb 30000 x 30000": ("7", _bytes(".png", lambda: tb._png_header(30000, 30000))),
    "TIFF bomb 30000 x 30000": ("7", _tiff_bomb),
    "3-D stack (.npy)": ("", _npy(np.zeros((5, 24, 24), np.float32))),
    "pickled object array (.npy)": ("", _npy(np.array([{"a": 1}], object), allow_pickle=True)),
}


def _predict_item(item: str) -> str:
    return f"{item}, {PREDICT_NOTE}" if item else PREDICT_NOTE


def _file_in_dataset(t: Path, build) -> Path:
    """A valid data set whose img1 input is replaced by the bad file (target resized to match
    when the bad file is a readable image)."""
    root = tb._dataset(t)
    att = root / "attenuation"
    (att / "img1.png").unlink()
    if build is None:
        return root
    path = build(att, "img1")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shape = read_image(path).shape
    except ValueError:
        return root
    if shape != (24, 24):
        target = np.full(shape, 0.2, np.float32) + tb._tiny(np.zeros(shape))
        write_image(root / "darkfield" / "img1.tif", target)
    return root


def _file_rows() -> list[Row]:
    rows: list[Row] = []
    for kind, (item, build) in FILE_KINDS.items():

        def one(t, m, build=build):
            path = build(t, "x") if build else t / "x.png"
            return _call(lambda: read_image(path))

        rows.append((kind, "read_image", item, one))
        rows.append((kind, "validate", item, _dataset_cli("validate", build)))
        rows.append((kind, "train", item, _dataset_cli("train", build)))
        rows.append((kind, "evaluate", item, _dataset_cli("evaluate", build)))
        rows.append((kind, "predict", _predict_item(item), _predict_file(build)))
    return rows


def _train_argv(root: Path, run: Path, *extra) -> list:
    return ["train", "--data", root, "--out", run, *tb.TRAIN_FLAGS, *extra]


def _eval_argv(root: Path, ckpt: Path) -> list:
    return ["evaluate", "--checkpoint", ckpt, "--data", root, "--samples", "2", "--device", "cpu"]


def _predict_argv(inputs: Path, out: Path, ckpt: Path) -> list:
    return ["predict", inputs, "--out", out, "--checkpoint", ckpt, "--samples", "2"] + [
        "--device",
        "cpu",
        "--quiet",
    ]


def _dataset_cli(command: str, build):
    def run(t: Path, m) -> tuple[str, str]:
        root = _file_in_dataset(t, build)
        if command == "validate":
            return _cli(["validate", root])
        if command == "train":
            return _cli(_train_argv(root, t / "run"))
        return _cli([*_eval_argv(root, tb._tiny_checkpoint(t)), "--quiet"])

    return run


def _predict_file(build):
    def run(t: Path, m) -> tuple[str, str]:
        inputs = t / "in"
        write_image(inputs / "good.png", tb._ramp())
        target = build(inputs, "bad") if build else inputs / "bad.png"
        arg = inputs if build else target  # a missing file is named on the command line
        return _cli(_predict_argv(arg, t / "out", tb._tiny_checkpoint(t)))

    return run


# ------------------------------------------------------------------ bad checkpoints


def _edit(fn) -> Callable[[Path, pytest.MonkeyPatch], Path]:
    return lambda t, m: tb._tiny_checkpoint(t, "bad.pt", edit=fn)


CHECKPOINT_KINDS: dict[str, tuple[str, Callable[[Path, pytest.MonkeyPatch], Path]]] = {
    "missing checkpoint": ("", lambda t, m: t / "none.pt"),
    "checkpoint is a directory": ("", lambda t, m: tb._mkdir(t / "ck")),
    "empty checkpoint file": ("9", lambda t, m: tb._file(t, "bad.pt", b"")),
    "text file as checkpoint": ("9", lambda t, m: tb._file(t, "bad.pt", b"hello, no weights\n")),
    "truncated checkpoint": (
        "9",
        lambda t, m: tb._file(t, "bad.pt", tb._tiny_checkpoint(t).read_bytes()[:3000]),
    ),
    "plain torch dict, no marker": ("", _edit(lambda raw: raw.update(format="x"))),
    "hostile pickle: __reduce__ in history": ("", tb._hostile("reduce-in-history")),
    "hostile pickle: __reduce__ top level": ("", tb._hostile("reduce-top-level")),
    "hostile pickle: legacy (non-zip) format": ("", tb._hostile("legacy-format")),
    "hostile pickle: bare pickle named .pt": ("", tb._hostile("bare-pickle")),
    "config does not match weights": (
        "9",
        _edit(lambda raw: raw["generator_config"].update(base_width=8)),
    ),
    "missing stage weights": ("9", _edit(tb._drop_stage)),
    "unknown generator_config key": (
        "9",
        _edit(lambda raw: raw["generator_config"].update(colour="blue")),
    ),
    "stages_trained out of range": ("9", _edit(lambda raw: raw.update(stages_trained=7))),
    "untrained (stages_trained 0)": ("9", _edit(lambda raw: raw.update(stages_trained=0))),
    "NaN weights": ("4", _edit(tb._nan_weights)),
}


def _no_code(fn):
    """Say whether a hostile checkpoint ran its code (it creates ``pwned``)."""

    def run(t: Path, m) -> tuple[str, str]:
        outcome, message = fn(t, m)
        if (t / "pwned").exists():
            return "CODE RAN", message
        return f"{outcome}, no code ran", message

    return run


def _checkpoint_rows() -> list[Row]:
    rows: list[Row] = []
    for kind, (item, build) in CHECKPOINT_KINDS.items():

        def evaluate(t, m, build=build):
            return _cli([*_eval_argv(tb._dataset(t), build(t, m)), "--quiet"])

        def predict(t, m, build=build):
            write_image(t / "in" / "a.png", tb._ramp())
            return _cli(_predict_argv(t / "in", t / "out", build(t, m)))

        def resume(t, m, build=build):
            ckpt = build(t, m)
            run = tb._mkdir(t / "run")
            if ckpt.exists():
                os.replace(ckpt, run / "last.pt")
            return _cli(["train", "--data", tb._dataset(t), "--out", run, "--resume", "--quiet"])

        if kind.startswith("hostile"):
            evaluate, predict, resume = (_no_code(f) for f in (evaluate, predict, resume))
        rows.append((kind, "evaluate", item, evaluate))
        rows.append((kind, "predict", _predict_item(item), predict))
        if kind not in ("missing checkpoint", "checkpoint is a directory"):
            rows.append((f"{kind} as last.pt", "train --resume", item, resume))
    return rows


# ------------------------------------------------------------------ outputs, runs, leftovers


#: Command rows of tests/test_bad_input.py that the checkpoint and file rows above repeat.
COVERED = {
    *(c.kind for c in tb.CASES if c.entry == "evaluate" and "--json" not in c.kind),
    "train on a 16 x 16 image",
}
COVERED.discard("evaluate an empty split")


#: Issue 14 item of the command rows taken from tests/test_bad_input.py (first match wins).
CASE_ITEMS = {
    "--json": "10",
    "empty split": "5",
    "empty val split": "5",
    "other settings": "11",
    "--resume": "2",
    "not empty": "",
    "size": "",
    "": "10",
}


def _from_cases() -> list[Row]:
    """The command rows of tests/test_bad_input.py (outputs, resume, splits, make-data)."""
    rows: list[Row] = []
    for case in tb.CASES:
        if case.entry not in ("train", "evaluate", "make-data", "validate (CLI)"):
            continue
        if case.kind in COVERED:
            continue

        def run(t, m, case=case):
            argv, _ = case.make(t, m)
            return _cli(argv)

        item = next((n for key, n in CASE_ITEMS.items() if key in case.kind), "")
        rows.append((case.kind, case.entry.replace(" (CLI)", ""), item, run))
    return rows


def _predict_out(t: Path, out: Path) -> tuple[str, str]:
    write_image(t / "in" / "a.png", tb._ramp())
    return _cli(_predict_argv(t / "in", out, tb._tiny_checkpoint(t)))


def _predict_rerun_other_checkpoint(t: Path, m) -> tuple[str, str]:
    _predict_out(t, t / "out")
    other = tb._tiny_checkpoint(t, "other.pt", edit=lambda raw: raw.update(epoch=9))
    return _cli(_predict_argv(t / "in", t / "out", other))


def _predict_after_kill(t: Path, m) -> tuple[str, str]:
    write_image(t / "in" / "a.png", tb._ramp())
    tb._kill_during_write(t / "in" / "b.tif")
    return _cli(_predict_argv(t / "in", t / "out", tb._tiny_checkpoint(t)))


def _stale_in_run(t: Path, m) -> tuple[str, str]:
    root = tb._dataset(t)
    _cli(_train_argv(root, t / "run"))
    (t / "run" / ".last.abcd1234.tmp.pt").write_bytes(b"")
    return _cli(["train", "--data", root, "--out", t / "run", "--resume", "--quiet"])


def _run_exists(t: Path, m) -> tuple[str, str]:
    root = tb._dataset(t)
    _cli(_train_argv(root, t / "run"))
    return _cli(_train_argv(root, t / "run"))


def _validate_folder(kind: str):
    def run(t: Path, m) -> tuple[str, str]:
        root = tb._dataset(t)
        if kind == "data folder missing":
            return _cli(["validate", t / "nope"])
        if kind == "manifest missing":
            (root / "manifest.csv").unlink()
        elif kind == "patient in two splits":
            text = (root / "manifest.csv").read_text().replace("img2,p2,", "img2,p0,")
            (root / "manifest.csv").write_text(text)
        elif kind == "shape mismatch":
            write_image(root / "darkfield" / "img0.tif", tb._tiny(np.zeros((24, 30))))
        elif kind == "constant dark-field target":
            write_image(root / "darkfield" / "img0.tif", np.zeros((24, 24), np.float32))
        return _cli(["validate", root])

    return run


def _other_rows() -> list[Row]:
    deny = tb._deny_mkstemp_in
    rows: list[Row] = [
        ("train run folder already holds a run", "train", "", _run_exists),
        ("stale temporaries in the run folder", "train --resume", "12", _stale_in_run),
        (
            "predict --out is a file",
            "predict",
            PREDICT_NOTE,
            lambda t, m: _predict_out(t, tb._file(t, "out", b"x")),
        ),
        (
            "predict --out not writable",
            "predict",
            PREDICT_NOTE,
            lambda t, m: (deny(m, "out"), _predict_out(t, t / "out"))[1],
        ),
        (
            "predict read-only subfolder (aleatoric/)",
            "predict",
            "13, " + PREDICT_NOTE,
            lambda t, m: (deny(m, "aleatoric"), _predict_out(t, t / "out"))[1],
        ),
        (
            "predict disk full",
            "predict",
            PREDICT_NOTE,
            lambda t, m: (tb._disk_full(m), _predict_out(t, t / "out"))[1],
        ),
        (
            "predict rerun with another checkpoint",
            "predict",
            "1, " + PREDICT_NOTE,
            _predict_rerun_other_checkpoint,
        ),
        (
            "predict after a killed write in inputs",
            "predict",
            "12, " + PREDICT_NOTE,
            _predict_after_kill,
        ),
        (
            "DICOM bomb 30000 x 30000",
            "read_image",
            "7",
            lambda t, m: _call(lambda: read_image(tb._dicom_bomb(t))),
        ),
        ("directory as image", "read_image", "", lambda t, m: _call(lambda: read_image(t))),
        (
            "make-data --size 8",
            "make-data",
            "",
            lambda t, m: _cli(["make-data", "--out", t / "o", "--size", "8", "--quiet"]),
        ),
    ]
    for kind in (
        "data folder missing",
        "manifest missing",
        "patient in two splits",
        "shape mismatch",
        "constant dark-field target",
    ):
        rows.append((kind, "validate", "", _validate_folder(kind)))
    return rows


# ------------------------------------------------------------------ the table


def build_rows() -> list[Row]:
    return [*_file_rows(), *_checkpoint_rows(), *_from_cases(), *_other_rows()]


#: The random part of our temporary names (``.b.k2x9q0z1.tmp.tif``), shown as ``XXXXXXXX``.
_RANDOM = re.compile(r"(?<=\.)[a-z0-9_]{8}(?=\.tmp)")


def _cell(text: str, tmp: Path, width: int = 260) -> str:
    text = _RANDOM.sub("XXXXXXXX", text.replace(str(tmp), "<tmp>")).replace("|", "\\|")
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def run_all(rows: list[Row]) -> list[tuple[str, str, str, str, str]]:
    out = []
    for kind, entry, item, fn in rows:
        with tempfile.TemporaryDirectory() as d, pytest.MonkeyPatch.context() as m:
            tmp = Path(d).resolve()
            t0 = time.perf_counter()
            try:
                outcome, message = fn(tmp, m)
            except BaseException as exc:  # noqa: BLE001 - a builder or check that broke
                outcome, message = "TRACEBACK", f"{type(exc).__name__}: {exc}"
            seen = _cell(message, tmp)
            print(f"{time.perf_counter() - t0:5.1f}s  {entry:<14} {kind:<44} {outcome}", flush=True)
        out.append((kind, entry, item, outcome, seen))
    return out


def _parse(path: Path) -> dict[tuple[str, str], tuple[str, str]]:
    """(kind, entry) -> (outcome, message) of a table this script wrote."""
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 6 and cells[0].isdigit():
            rows[(cells[1], cells[2])] = (cells[4], _RANDOM.sub("XXXXXXXX", cells[5]))
    return rows


def markdown(results: list[tuple[str, str, str, str, str]], before: Path | None = None) -> str:
    old = _parse(before) if before is not None else {}
    head = "| # | kind | entry point | issue 14 item | outcome | what the user sees |"
    rule = "|---|------|-------------|---------------|---------|--------------------|"
    if old:
        head += " before (where different) |"
        rule += "--------------------------|"
    lines = [head, rule]
    for i, (kind, entry, item, outcome, seen) in enumerate(results, 1):
        row = f"| {i} | {kind} | {entry} | {item} | {outcome} | {seen} |"
        if old:
            was = old.get((kind, entry))
            shown = "" if was is None or was == (outcome, seen) else f"{was[0]}: {was[1]}"
            row += f" {shown} |"
        lines.append(row)
    tracebacks = sum(r[3] == "TRACEBACK" for r in results)
    lines.append("")
    lines.append(
        f"{len(results)} rows; {tracebacks} with a traceback. Outcome: `exit N` of the command "
        "line, or for a library call `error`/`warning`/`ok`. Rows marked 'predict branch' run "
        "predict's per-file checks of the inference pipeline (issue 14 items 1, 12, 13)."
    )
    if old:
        changed = sum(1 for line in lines[2:-2] if not line.endswith("|  |"))
        lines.append(f"{changed} rows differ from {before.name}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    target = Path(argv[0]) if argv else Path("bad_input_table.md")
    before = Path(argv[1]) if len(argv) > 1 else None
    results = run_all(build_rows())
    target.write_text(markdown(results, before), encoding="utf-8")
    print(f"wrote {target} ({len(results)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
