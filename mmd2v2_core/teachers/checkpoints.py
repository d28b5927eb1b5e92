"""Reading checkpoints written by other projects, without running their code.

Original checkpoints (fairseq's ``base_imagenet.pt``, the BEiT-v2 release ``.pth``) are pickles that
reference classes of the projects that wrote them (``omegaconf.DictConfig``, ``argparse.Namespace``,
fairseq enums). Unpickling them normally would import those projects — or execute whatever a hostile
file asks for. ``load_original_checkpoint`` uses PyTorch's weights-only unpickler and, for each foreign
class it meets, registers an inert ``Foreign`` stand-in under that name: the tensors load, the
configuration survives as plain data (``Foreign.state``/``.args``), and no foreign code ever runs.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from ..errors import DataError

MAX_FOREIGN_CLASSES = 200
_UNSUPPORTED = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_BLOCKED = re.compile(r"GLOBAL ([\w.]+) whose module ([\w.]+) is blocked")


class Foreign:
    """Stand-in for an object of a class we do not import: records its name, arguments and state."""

    qualname = "?"
    args: tuple = ()  # class-level defaults: unpickling may create the object without calling __init__
    kwargs: dict = {}
    state = None

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"Foreign({self.qualname})"

    def __call__(self, *args, **kwargs):  # a stand-in for a function "called" during unpickling
        return Foreign(*args, **kwargs)


def _stand_in(qualname: str) -> type:
    return type("Foreign", (Foreign,), {"qualname": qualname})


def load_original_checkpoint(path: str | Path) -> dict:
    """The checkpoint's top-level dict, with foreign objects replaced by inert ``Foreign`` stand-ins."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint file not found")
    stand_ins: list[tuple[type, str]] = []
    for _ in range(MAX_FOREIGN_CLASSES):
        try:
            with torch.serialization.safe_globals(stand_ins):
                obj = torch.load(path, map_location="cpu", weights_only=True)
            break
        except pickle.UnpicklingError as exc:
            match = _UNSUPPORTED.search(str(exc))
            if _BLOCKED.search(str(exc)) or not match:
                raise unpickling_refusal(path, exc) from None
            stand_ins.append((_stand_in(match.group(1)), match.group(1)))
        except (RuntimeError, EOFError, OSError) as exc:
            raise DataError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt: {exc})") from None
    else:
        raise DataError(f"{path}: more than {MAX_FOREIGN_CLASSES} foreign classes; not a model checkpoint")
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict at the top level, found {type(obj).__name__}")
    return obj


def unpickling_refusal(path: Path, exc: pickle.UnpicklingError) -> DataError:
    """One line for a file ``torch.load(weights_only=True)`` would not unpickle: code it asked to run, or why."""
    blocked = _BLOCKED.search(str(exc))
    if blocked:
        return DataError(f"{path}: refused: the file asks to call {blocked.group(1)}, which can run code on this "
                         "machine; a model checkpoint never needs that")
    unsupported = _UNSUPPORTED.search(str(exc))
    reason = f"it holds an object of class {unsupported.group(1)}" if unsupported else str(exc).strip().splitlines()[0]
    return DataError(f"{path}: refused: not a plain-tensor file ({reason})")


def model_state(checkpoint: dict, path: str | Path, keys=("model", "module", "state_dict")) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint: under 'model' (fairseq, BEiT), 'module' or 'state_dict', or the top level."""
    for key in keys:
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    tensors = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise DataError(f"{path}: no tensors found (looked under {keys} and the top level)")
    return tensors
