"""Checkpoints: atomic saves, resume checkpoints with the random state and the best metric, loading weights."""

from __future__ import annotations

import logging
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver

from ..errors import InputError, InputNotFoundError


def existing_checkpoint(path: str | os.PathLike) -> str:
    """``path`` when the checkpoint file exists, else a one-line input error (for ``CheckpointLoader``)."""
    if not Path(path).is_file():
        raise InputNotFoundError(f"checkpoint {path} does not exist (train this fold first)")
    return str(path)


def _network_state(checkpoint) -> dict:
    """The network's part of a ``CheckpointSaver`` file's content (plain or ``{"model": ...}``)."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        return checkpoint["model"]
    return checkpoint


def checkpoint_mismatch(state: dict, network: torch.nn.Module) -> str | None:
    """How a state dict differs from ``network``'s tensors (names, shapes), in a few words, or None."""
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return "it holds no state dict"
    found = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    reshaped = [k for k in expected if k in found and found[k] != expected[k]]
    if not (missing or unexpected or reshaped):
        return None
    parts = [f"{len(missing)} tensor(s) missing"] if missing else []
    parts += [f"{len(unexpected)} unexpected"] if unexpected else []
    if reshaped:
        parts.append(
            f"{len(reshaped)} of another shape ({reshaped[0]}: {list(found[reshaped[0]])}, "
            f"the network's {list(expected[reshaped[0]])})"
        )
    return ", ".join(parts)


def loadable_checkpoint(path: str | os.PathLike, network: torch.nn.Module | None = None) -> str:
    """``path`` when the checkpoint exists, can be read (not truncated) and fits ``network``, else a one-line
    input error naming it (for ``CheckpointLoader``, whose own errors are long tracebacks). Memory-maps the
    file: the tensors' data is not read."""
    path = existing_checkpoint(path)
    named = Path(path).absolute()
    try:
        state = _network_state(torch.load(path, map_location="cpu", mmap=True, weights_only=True))
    except Exception as error:
        reason = " ".join(f"{type(error).__name__}: {error}".split()).split(". ")[0]  # torch adds paragraphs
        raise InputError(
            f"checkpoint {named} is unreadable (truncated or not a PyTorch checkpoint): {reason}"
        ) from error
    mismatch = None if network is None else checkpoint_mismatch(state, network)
    if mismatch:
        raise InputError(
            f"checkpoint {named} does not fit the network ({mismatch}): was it trained with other network_def settings?"
        )
    return path


def load_network_weights(network: torch.nn.Module, path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load a checkpoint written by MONAI's ``CheckpointSaver`` (plain or ``{"model": ...}``) into ``network``."""
    path = loadable_checkpoint(path, network)
    network.load_state_dict(_network_state(torch.load(path, map_location=device, weights_only=True)))
    return network.to(device)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` writing every file atomically (temporary file, then rename).

    MONAI 1.6.1 builds its savers with ``atomic=False``, so a run killed while saving leaves a truncated
    ``.pt`` that looks complete (and a later resume or evaluation fails on it). Ignite's atomic save also
    gives group/others read permission, the reason MONAI had turned it off.

    ``key_metric_from_epoch``: the key-metric checkpoint only competes from this (1-based) trainer epoch on;
    earlier epochs score ``-inf``, so a model of that phase is only kept until the first one that counts
    (CE then Dice: the best model of the Dice fine-tuning, not an earlier CE epoch).
    """

    def __init__(self, *args, key_metric_from_epoch: int = 1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler._atomic = True
                if getattr(checkpoint.save_handler, "filename", None) is not None:  # MONAI's fixed name
                    # the atomic save replaces the file: removing it first (ignite) would leave a moment without
                    # model.pt, and fail when a resumed record names a model.pt that is gone
                    checkpoint.save_handler.remove = lambda filename: None
        if self._key_metric_checkpoint is not None and key_metric_from_epoch > 1:
            score = self._key_metric_checkpoint.score_function
            first = int(key_metric_from_epoch)

            def score_from_epoch(engine):  # the evaluator's epoch is the trainer's (ValidationHandler)
                return score(engine) if engine.state.epoch >= first else -math.inf

            self._key_metric_checkpoint.score_function = score_from_epoch

    def state_dict(self) -> dict:
        """The key-metric checkpoint's record of the model it kept (ignite's ``(priority, filename)`` list),
        restored by MONAI's ``load_state_dict``: in a resume checkpoint, a resumed run's ``model.pt`` then
        competes with the best model so far, not only with the epochs after the resume."""
        if self._key_metric_checkpoint is None:
            return {}
        saved = self._key_metric_checkpoint.state_dict()
        return {key: [(float(priority), str(name)) for priority, name in items] for key, items in saved.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict:
            super().load_state_dict(state_dict)


RESUME_PREFIX = "resume"


RANDOM_STATE_KEY = "random_state"


# the evaluator's best validation value and epoch (MONAI's state), saved with it through ignite's user keys
BEST_METRIC_KEYS = ("best_metric", "best_metric_epoch")


# parts of a resume checkpoint that earlier versions did not write: loaded only when present
OPTIONAL_RESUME_KEYS = (RANDOM_STATE_KEY, "evaluator", "best_model_saver")


def keep_best_metric(objects: dict) -> dict:
    """Make every MONAI evaluator among ``objects`` save and load its best key-metric value and epoch
    (ignite's ``state_dict_user_keys``); without them a resumed run's first validation is a new best."""
    from monai.engines import Evaluator

    for value in objects.values():
        if isinstance(value, Evaluator):
            value.state_dict_user_keys.extend(k for k in BEST_METRIC_KEYS if k not in value.state_dict_user_keys)
    return objects


class RandomState:
    """The global random generators (torch CPU and CUDA, NumPy, Python) as a checkpointable object.

    Saved with each resume checkpoint, so a resumed run draws the same shuffles and augmentations as an
    uninterrupted one and ends with the same weights (on the CPU; cuDNN autotuning and atomics make GPU
    runs differ in the last bits anyway). Only tensors and plain numbers, so ``torch.load(weights_only=True)``
    (MONAI's CheckpointLoader) reads it.
    """

    def state_dict(self) -> dict:
        name, keys, position, has_gauss, cached_gaussian = np.random.get_state()  # noqa: NPY002 (MONAI seeds it)
        version, python_state, gauss_next = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "name": name,
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "position": int(position),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached_gaussian),
            },
            "python": {"version": version, "state": torch.tensor(python_state, dtype=torch.int64)},
        }
        if gauss_next is not None:
            state["python"]["gauss_next"] = float(gauss_next)
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        numpy_state = state["numpy"]
        np.random.set_state(  # noqa: NPY002
            (
                numpy_state["name"],
                numpy_state["keys"].numpy().astype(np.uint32),
                numpy_state["position"],
                numpy_state["has_gauss"],
                numpy_state["cached_gaussian"],
            )
        )
        python_state = state["python"]
        random.setstate(
            (python_state["version"], tuple(int(v) for v in python_state["state"]), python_state.get("gauss_next"))
        )
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])


def resume_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    """The epoch checkpoints :class:`EpochCheckpointSaver` left in ``ckpt_dir`` (none: nothing to resume)."""
    return list(Path(ckpt_dir).glob(f"{RESUME_PREFIX}_checkpoint_epoch=*.pt"))


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path:
    """The newest epoch checkpoint written by :class:`EpochCheckpointSaver` in ``ckpt_dir``."""
    candidates = resume_checkpoints(ckpt_dir)
    if not candidates:
        raise FileNotFoundError(f"no epoch checkpoint to resume from in {ckpt_dir} (expected {RESUME_PREFIX}_*.pt)")
    return max(candidates, key=lambda p: int(p.stem.rsplit("=", 1)[1]))


class EpochCheckpointSaver:
    """Save model, optimizer, LR scheduler and trainer state at the end of an epoch (only the newest is kept,
    the older one removed once the new one is in place).

    What ``resume=True`` restarts from, random generator states included (:class:`RandomState`). With the
    evaluator and the best-model :class:`AtomicCheckpointSaver` in ``save_dict``, it also holds the best
    validation value and epoch and which model ``model.pt`` is, so a resumed run keeps the same best model. A
    checkpoint is written once ``min_interval_s`` seconds have passed since the last one (or since training
    started), and after the last epoch; 0 saves every epoch. A resume checkpoint of FlexibleUNet-resnet18
    with its AdamW state is 155 MiB and took 0.16 to 0.23 s to save on the development CPU
    (benchmarks/throughput.py): every epoch, that would add about a fifth to a GPU epoch of 800 images at
    800 images/s. The trainer is added when attached, so configs need not
    reference the trainer from inside its own handler list.
    """

    def __init__(self, save_dir: str | os.PathLike, save_dict: dict, min_interval_s: float = 0.0) -> None:
        if min_interval_s < 0:
            raise ValueError(f"min_interval_s must be >= 0, got {min_interval_s}")
        self.save_dir = str(save_dir)
        self.save_dict = keep_best_metric(dict(save_dict))
        self.min_interval_s = float(min_interval_s)
        self._last_save = time.monotonic()

    def attach(self, engine: Engine) -> None:
        saver = AtomicCheckpointSaver(
            save_dir=self.save_dir,
            save_dict={**self.save_dict, "trainer": engine, RANDOM_STATE_KEY: RandomState()},
            file_prefix=RESUME_PREFIX,
            save_interval=1,
            epoch_level=True,
            n_saved=None,  # ignite would remove the previous one before writing the new one: see _save
        )
        saver.logger = engine.logger
        engine.add_event_handler(Events.STARTED, self._start_clock)
        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=self._due), self._save, saver)

    def _save(self, engine: Engine, saver: AtomicCheckpointSaver) -> None:
        """Write the new checkpoint, then remove the older ones (also those of a run before a resume): a
        kill at any moment leaves one to resume from."""
        saver.interval_completed(engine)
        newest = latest_checkpoint(self.save_dir)
        for older in resume_checkpoints(self.save_dir):
            if older != newest:
                older.unlink(missing_ok=True)

    def _start_clock(self, engine: Engine) -> None:
        self._last_save = time.monotonic()

    def _due(self, engine: Engine, epoch: int) -> bool:
        now = time.monotonic()
        if now - self._last_save >= self.min_interval_s or epoch == engine.state.max_epochs:
            self._last_save = now
            return True
        return False


class ResumeFromLatestCheckpoint:
    """With ``enabled``, load the newest :class:`EpochCheckpointSaver` checkpoint before training starts.

    The trainer's epoch and iteration come back with it, so the run ends at the same ``epochs``; loss
    schedules are functions of the epoch and resume with it, the random generators continue where the
    checkpoint left them, and the evaluator's best value and the best-model saver's record come back
    (``load_dict`` names them as :class:`EpochCheckpointSaver`'s ``save_dict`` does).
    """

    def __init__(self, enabled: bool, ckpt_dir: str | os.PathLike, load_dict: dict, map_location=None) -> None:
        self.enabled = bool(enabled)
        self.ckpt_dir = ckpt_dir
        self.load_dict = keep_best_metric(dict(load_dict))
        self.map_location = map_location

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        from monai.handlers import CheckpointLoader

        path = latest_checkpoint(self.ckpt_dir)
        logging.getLogger(__name__).info("resuming from %s", path)
        load_dict = {**self.load_dict, "trainer": engine, RANDOM_STATE_KEY: RandomState()}
        saved = torch.load(path, map_location="cpu", mmap=True, weights_only=True).keys()
        for key in (k for k in OPTIONAL_RESUME_KEYS if k in load_dict and k not in saved):
            logging.getLogger(__name__).warning("%s holds no %s (an earlier version wrote it)", path, key)
            del load_dict[key]
        loader = CheckpointLoader(load_path=str(path), load_dict=load_dict, map_location=self.map_location)
        loader.attach(engine)


def load_pretrained_weights(
    network: torch.nn.Module, path: str | os.PathLike, device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """Copy every tensor of a checkpoint whose name and shape match into ``network`` (for fine-tuning).

    Tensors that do not fit, such as a new output layer with another number of classes, keep their fresh
    initialisation and are logged. Uses MONAI's ``copy_model_state``: ``CheckpointLoader(strict_shape=False)``
    loads no weights at all in MONAI 1.6.1. Raises when nothing matches (wrong checkpoint).
    """
    from monai.networks.utils import copy_model_state

    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"checkpoint to fine-tune from {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    _, updated, unchanged = copy_model_state(network, state, inplace=True)
    if not updated:
        raise InputError(f"checkpoint {path} has no tensor that fits the network: is it the right model?")
    logging.getLogger(__name__).info(
        "fine-tuning from %s: %d tensors loaded, %d kept fresh%s",
        path,
        len(updated),
        len(unchanged),
        f" ({', '.join(unchanged[:6])}{', ...' if len(unchanged) > 6 else ''})" if unchanged else "",
    )
    return network.to(device)
