"""Reading checkpoints: safe loading (``weights_only=True``), the content checks that make every
loadable checkpoint rebuildable, and the generator it holds."""

import os
import pickle
import re
import warnings
from pathlib import Path

import torch
from torch import nn

import darkfield_nb
from darkfield_nb.models import GeneratorConfig, ProgressiveGenerator

from .format import FORMAT, FORMAT_VERSION, REQUIRED_KEYS, CheckpointError
from .geometry import checkpoint_geometry

# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


#: First bytes of the files ``torch.save`` writes: a zip archive (the default since torch 1.6)
#: or a legacy pickle (protocol 2+ starts with 0x80).
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


def _not_torch(path: Path, exc: Exception | None) -> CheckpointError:
    """One line for bytes ``torch.load`` cannot read, saying what the file looks like."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head.startswith(_TORCH_MAGIC):
        shown = head[:12]
        text = shown.decode("ascii", "replace") if shown.isascii() else repr(shown)
        what = (
            f"it starts with {text!r}, a text file"
            if shown.isascii() and shown.decode("ascii").isprintable()
            else f"it starts with {shown!r}"
        )
        return CheckpointError(
            f"{path}: not a PyTorch checkpoint file ({what}; torch.save writes a zip archive)"
        )
    reason = _one_line(str(exc)).split(". ")[0] or "no further detail"  # torch adds advice
    return CheckpointError(
        f"{path}: not a readable PyTorch checkpoint file (truncated or damaged: "
        f"{type(exc).__name__}: {reason[:200]})"
    )


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint as the raw dict described in the module docstring (for resuming).

    Uses ``torch.load(..., weights_only=True)``, then :func:`check_contents`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: one line naming the file: a directory, an empty file, not a PyTorch
            file (a text file, truncated or damaged bytes), a PyTorch file holding objects that
            weights-only loading refuses, a PyTorch file that is not a darkfield-nb checkpoint,
            a format version newer than this package reads, a checkpoint missing required
            entries, or contents that do not hold together (:func:`check_contents`).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file (.pt)")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint file: empty file (0 bytes; an interrupted "
            "copy or download?)"
        )
    with open(path, "rb") as fh:
        if not fh.read(4).startswith(_TORCH_MAGIC):  # text, an image, ...: do not unpickle it
            raise _not_torch(path, None)
    try:
        with warnings.catch_warnings():  # torch's note on a foreign pickle protocol is noise
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "weights_only" in text or "Weights only" in text:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(
                f"{path}: refusing to load: the file holds a Python object{what} that safe "
                "(weights_only=True) loading does not allow; a darkfield-nb checkpoint holds "
                "only tensors and plain data"
            ) from exc
        raise _not_torch(path, exc) from exc
    except Exception as exc:  # torch raises many types for foreign bytes (KeyError, EOFError, ...)
        raise _not_torch(path, exc) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        what = (
            f"a dict with keys {sorted(map(str, ckpt))[:8]}"
            if isinstance(ckpt, dict)
            else f"a {type(ckpt).__name__}"
        )
        raise CheckpointError(
            f"{path}: a PyTorch file but not a darkfield-nb checkpoint: it holds {what}, "
            f"without the marker format={FORMAT!r} (write checkpoints with "
            "darkfield_nb.checkpoint.save)"
        )
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: invalid checkpoint format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} (written by darkfield-nb "
            f"{ckpt.get('package_version', '?')}) is newer than this darkfield-nb "
            f"{darkfield_nb.__version__} reads (up to {FORMAT_VERSION}); upgrade darkfield-nb"
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint is missing entries {missing}")
    problem = check_contents(ckpt)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    return ckpt


def _count(names: list[str], what: str) -> str:
    """``"3 missing (first: a.b)"``; ``"0 missing"`` for none."""
    return f"{len(names)} {what}" + (f" (first: {names[0]})" if names else "")


def check_contents(ckpt: dict) -> str | None:
    """The first reason the entries of a raw checkpoint dict do not hold together, or None.

    Checked: ``generator_config`` builds a :class:`GeneratorConfig`; ``stage`` is in
    ``0 .. n_stages - 1``, ``epoch >= 0`` and ``stages_trained`` in ``0 .. n_stages``; the
    ``generator`` state dict has exactly the tensors of a generator of that config, of the
    same shapes (counts of missing, unexpected and wrongly shaped tensors, with the first of
    each); every floating-point weight is finite. The generator is built on the ``meta``
    device for the comparison, so no memory is allocated for it.
    """
    raw = ckpt.get("generator_config")
    if not isinstance(raw, dict):
        return f"generator_config is a {type(raw).__name__}, expected a dict of settings"
    try:
        cfg = GeneratorConfig.from_stored_dict(dict(raw))
    except (ValueError, TypeError) as exc:
        return f"invalid generator_config: {_one_line(exc)}"
    n = cfg.n_stages
    ranges = (("stage", 0, n - 1), ("epoch", 0, None), ("stages_trained", 0, n))
    for key, low, high in ranges:
        value = ckpt.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{key} is {value!r}, expected an integer"
        if value < low or (high is not None and value > high):
            span = f"{low} .. {high}" if high is not None else f">= {low}"
            return f"{key}={value} is out of range ({span} for a {n}-stage generator)"
    state = ckpt.get("generator")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return "generator is not a state dict of tensors"
    try:
        with torch.device("meta"):
            expected = {
                k: tuple(v.shape) for k, v in ProgressiveGenerator(cfg).state_dict().items()
            }
    except Exception as exc:  # a config the model code cannot build
        return f"generator_config cannot be built ({type(exc).__name__}: {_one_line(exc)})"
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} stored {tuple(state[k].shape)}, config needs {shape}"
        for k, shape in expected.items()
        if k in state and tuple(state[k].shape) != shape
    ]
    if missing or unexpected or wrong:
        stages_missing = sorted({k.split(".")[1] for k in missing if k.startswith("stages.")})
        hint = (
            f"; no weights for stage(s) {', '.join(stages_missing)}"
            if stages_missing and len(missing) == sum(k.startswith("stages.") for k in missing)
            else ""
        )
        return (
            "cannot rebuild the generator: its weights do not match its generator_config "
            f"(n_stages={n}, base_width={cfg.base_width}, depth={cfg.depth}): "
            f"{_count(missing, 'missing')}, {_count(unexpected, 'unexpected')}, "
            f"{_count(wrong, 'of the wrong shape')}{hint}"
        )
    bad = []
    n_bad = 0
    for k, v in state.items():
        # a sum is finite when every term is (one fast pass); count only when it is not
        if v.is_floating_point() and not torch.isfinite(v.float().sum()):
            count = int((~torch.isfinite(v)).sum())
            if count:
                bad.append(k)
                n_bad += count
    if bad:
        return (
            f"the generator weights hold {n_bad} non-finite value(s) (NaN/Inf) in "
            f"{_count(bad, 'tensor(s)')}; the run that wrote it diverged or the file is damaged"
        )
    return None


def float32_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with its floating-point tensors cast to float32 (a ``half=True`` checkpoint
    stores float16 weights); integer buffers such as BatchNorm's counters are kept as they are."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def generator_from_checkpoint(
    ckpt: dict,
    device: str | torch.device = "cpu",
    *,
    source: str | os.PathLike | None = None,
    checked: bool = False,
) -> nn.Module:
    """Rebuild the ProgressiveGenerator of a raw checkpoint dict (float32, eval mode).

    The model carries ``model.training_geometry``: :func:`checkpoint_geometry` of the dict,
    which ``darkfield_nb.synthesis.synthesize`` resamples every input to.

    The dict is checked with :func:`check_contents` first, unless ``checked``: a dict just
    returned by :func:`load_checkpoint` was checked there (the check reads every weight,
    about half a second for the shipped model on a loaded 2-core CPU).

    Raises:
        CheckpointError: one line naming ``source`` (default: "checkpoint") and the problem.
    """
    where = str(source) if source is not None else "checkpoint"
    try:
        problem = None if checked else check_contents(ckpt)
    except Exception as exc:  # a dict of the wrong shape altogether
        problem = f"not a checkpoint dict ({type(exc).__name__}: {_one_line(exc)})"
    if problem:
        raise CheckpointError(f"{where}: {problem}")
    try:
        model = ProgressiveGenerator(
            GeneratorConfig.from_stored_dict(dict(ckpt["generator_config"]))
        )
        model.load_state_dict(float32_state(ckpt["generator"]), strict=True)
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(
            f"{where}: cannot rebuild the generator ({_one_line(exc)[:300]})"
        ) from exc
    model.training_geometry = checkpoint_geometry(ckpt)
    return model.to(device).eval()


def load_with_generator(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[dict, nn.Module]:
    """The raw checkpoint dict of ``path`` (:func:`load_checkpoint`, which checks it) and its
    generator (:func:`generator_from_checkpoint`, float32, eval mode, not checked again).
    Errors: CheckpointError / FileNotFoundError naming the file."""
    ckpt = load_checkpoint(path)
    return ckpt, generator_from_checkpoint(ckpt, device, source=path, checked=True)


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Load the generator stored in a checkpoint: a float32 ProgressiveGenerator in eval mode.

    ``load_checkpoint(path)["stages_trained"]`` says how many of its stages were trained.
    Errors as in :func:`load_checkpoint` (a state dict that does not fit the stored config,
    non-finite weights, ...: CheckpointError naming the file).
    """
    return load_with_generator(path, device)[1]
