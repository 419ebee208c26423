"""Checkpoints: atomic, versioned files that hold a trained generator and, for resuming, the
whole training state.

Modules: ``format`` (marker, version, error), ``geometry`` (the training geometry),
``write`` (atomic saves, training state, RNG), ``read`` (safe loading, content checks, the
generator); ``darkfield_nb.checkpoint_entry`` adds a key to a checkpoint file.

A checkpoint is a plain dict written with ``torch.save`` and read back with
``torch.load(..., weights_only=True)``, so loading never unpickles arbitrary objects: it holds
only tensors, numbers, strings, lists, tuples and dicts. Keys::

    format             "darkfield-nb-checkpoint" (the marker that says what the file is)
    format_version     FORMAT_VERSION; a reader refuses files newer than it understands
    package_version    darkfield_nb.__version__ of the writer
    generator_config   GeneratorConfig as a plain dict
    generator          the generator's state dict (float16 when saved with half=True)
    generator_dtype    "float32" or "float16"
    stage, epoch       0-based stage the checkpoint belongs to, epochs of it completed
    stages_trained     number of stages whose training is finished
    optimizer, discriminator, discriminator_config, disc_optimizer, scaler
                       state dicts (or None) for resuming
    history            list of per-epoch dicts (see darkfield_nb.train)
    train_config       the training settings as a plain dict (or None)
    rng                Python, NumPy and torch (CPU and CUDA) RNG states (or None)
    geometry           the training images' geometry: {"size": [H, W], "field_of_view_mm": F,
                       "pixel_mm": P} (absent in older checkpoints: :func:`checkpoint_geometry`
                       then returns DEFAULT_GEOMETRY, the geometry every such checkpoint was
                       trained on, 256 px over a 40 cm field)

Writes go through :func:`darkfield_nb.io.atomic_path`: an interrupted save leaves the
previous file intact, and a save that fails for want of space or permission raises
:class:`~darkfield_nb.io.WriteError` naming the file.

Reading checks more than the marker: :func:`load_checkpoint` also refuses a generator config
it cannot build, ``stage``/``epoch``/``stages_trained`` out of range, weights that do not fit
the config (missing stage weights, unexpected or wrongly shaped tensors: counts and the first
of each) and non-finite weights, every time with one line naming the file. So the generator of
a checkpoint that loads can always be rebuilt.
"""

from .format import FORMAT, FORMAT_VERSION, REQUIRED_KEYS, CheckpointError
from .geometry import (
    DEFAULT_FIELD_OF_VIEW_MM,
    DEFAULT_GEOMETRY,
    checkpoint_geometry,
    dataset_geometry,
    make_geometry,
)
from .read import (
    check_contents,
    float32_state,
    generator_from_checkpoint,
    load,
    load_checkpoint,
    load_with_generator,
)
from .write import (
    restore_training_state,
    rng_state,
    save,
    save_trained,
    save_training_state,
    set_rng_state,
)

__all__ = [
    "DEFAULT_FIELD_OF_VIEW_MM",
    "DEFAULT_GEOMETRY",
    "FORMAT",
    "FORMAT_VERSION",
    "REQUIRED_KEYS",
    "CheckpointError",
    "check_contents",
    "checkpoint_geometry",
    "dataset_geometry",
    "float32_state",
    "generator_from_checkpoint",
    "load",
    "load_checkpoint",
    "load_with_generator",
    "make_geometry",
    "restore_training_state",
    "rng_state",
    "save",
    "save_trained",
    "save_training_state",
    "set_rng_state",
]
