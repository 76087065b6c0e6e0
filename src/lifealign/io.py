"""Atomic writes: a kill at any point leaves either the old file or the new one, never half of one."""
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch


def _atomic(path, write):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path, obj):
    _atomic(path, lambda f: f.write((json.dumps(obj, indent=1, default=_jsonable) + "\n").encode()))


def write_text(path, text):
    _atomic(path, lambda f: f.write(text.encode()))


def torch_save(obj, path):
    _atomic(path, lambda f: torch.save(obj, f))


def read_json(path):
    return json.loads(Path(path).read_text())


def replace_dir(tmp_dir, final_dir):
    """Move a fully written directory into place (an older copy is removed first)."""
    final_dir = Path(final_dir)
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
