"""Atomic writes: a kill at any point leaves either the old file or the new one, never half of one."""
import json
import os
import shutil
import sys
import tempfile
from contextlib import suppress
from pathlib import Path


def _atomic(path, write):
    """Write through a temp file in the same folder, moved into place with os.replace once complete;
    a failed write leaves no temp file behind, nor the folder when this call made it."""
    path = Path(path)
    made_dir = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        if made_dir:
            with suppress(OSError):
                path.parent.rmdir()
        raise


def write_bytes(path, data):
    _atomic(path, lambda f: f.write(data))


def write_json(path, obj):
    write_bytes(path, (json.dumps(obj, indent=1, default=_jsonable) + "\n").encode())


def write_text(path, text):
    write_bytes(path, text.encode())


def torch_save(obj, path):
    import torch

    _atomic(path, lambda f: torch.save(obj, f))


def read_json(path):
    return json.loads(Path(path).read_text())


def fresh_dir(path):
    """An empty folder at `path` (whatever was there is removed): where a directory is written
    before `replace_dir` moves it into place."""
    shutil.rmtree(path, ignore_errors=True)
    Path(path).mkdir(parents=True)
    return Path(path)


def replace_dir(tmp_dir, final_dir):
    """Move a fully written directory into place (an older copy is removed first)."""
    if Path(final_dir).exists():
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    torch = sys.modules.get("torch")  # a tensor means torch is loaded; no import for plain JSON
    if torch is not None and isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
