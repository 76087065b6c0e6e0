"""The six LifeAlign preference tasks: where they live, how they are read, checked and split.

The data is the authors' release (commit e7e5581 of real-ljs/LifeAlign): for each task a folder
with train.json and test.json, each a JSON array of {"query", "chosen", "rejected"} strings. It is
never part of this repository: it is read from a path (see `default_data_dir`) or fetched with
`download_release`, which verifies every file against its git blob SHA-1.

Reading (`read_split`) is strict about structure and explicit about content: a malformed file is a
`DataError` naming the file, record and key; unusable pairs are filtered out and counted, never
dropped silently. Records keep file order, so that replay's "first 20% of the rows" (the paper's
replay) keeps its meaning.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path

from .io import write_bytes


@dataclass(frozen=True)
class Task:
    name: str         # folder name in the release, e.g. "hh-rlhf-harmless-base"
    short: str        # short name for tables and file names, e.g. "harmless"
    description: str  # what the preference encodes, in one line


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("Capybara-Preferences", "capybara", "general helpfulness and instruction following (multi-turn chats)"),
    Task("HC3", "hc3", "human-expert answers (chosen) over ChatGPT answers (rejected)"),
    Task("hh-rlhf-harmless-base", "harmless", "harmlessness: refuse harmful requests, still help safe ones"),
    Task("hh-rlhf-helpful-base", "helpful", "helpfulness"),
    Task("safe-rlhf", "safe-rlhf", "helpfulness under a strict safety constraint (PKU-SafeRLHF)"),
    Task("TruthfulQA", "truthfulqa", "truthfulness: chosen = one correct answer, rejected = '; '-joined false answers"),
]}

# the paper's task orders, T1..T6 being TASKS in the order above; order1 is the main table's
ORDERS: dict[str, list[str]] = {
    order: [list(TASKS)[t - 1] for t in paper_order]
    for order, paper_order in {"order1": (1, 2, 3, 4, 5, 6), "order2": (6, 5, 4, 3, 2, 1),
                               "order3": (3, 1, 6, 4, 2, 5)}.items()
}

UPSTREAM_COMMIT = "e7e5581"
UPSTREAM_URL = "https://raw.githubusercontent.com/real-ljs/LifeAlign/{commit}/data/{task}/{split}.json"

# git blob SHA-1 of each official file (`git hash-object`). The Capybara files and HC3/train.json
# are from the data README (not in the shared copy, each over 4 MiB); the others were computed from
# the shared copy, which is byte-identical to upstream.
BLOB_SHA1: dict[tuple[str, str], str] = {
    ("Capybara-Preferences", "train"): "e224af11881965c916d2d539f13cb229fb714af1",
    ("Capybara-Preferences", "test"): "68ffa117fb12de785c9c1a9b5dc0cc978489d35b",
    ("HC3", "train"): "5fe0a8210b4c567e65a52e2ec8b6def20798d308",
    ("HC3", "test"): "fddb6bb4a614808c78fcecc44ee891eac92f2c2d",
    ("hh-rlhf-harmless-base", "train"): "87220ca64a143227980fb4394a139711701e3d11",
    ("hh-rlhf-harmless-base", "test"): "50c0506536708674858ca6e13208e86edc94bfc9",
    ("hh-rlhf-helpful-base", "train"): "cc66886a444191682494c1e90f0c6d29dd383bc9",
    ("hh-rlhf-helpful-base", "test"): "eb0fccd4535fa5e18393b24dd3c068148d6daccb",
    ("safe-rlhf", "train"): "8d65b4ea3280a5aef849877deea16c0ae9803b85",
    ("safe-rlhf", "test"): "03e2b98c4f625240754a6a46e3d05420548b3975",
    ("TruthfulQA", "train"): "be20e9a511dfd1ad701f718985c25b9cbe1ee6aa",
    ("TruthfulQA", "test"): "bbf3d2a526906bc5dcd93e910f30713ce2e5fbc2",
}

RELEASE_DIRNAME = Path("..") / "shared" / "data" / "lifealign-release"
DATA_DIR_ENV = "LIFEALIGN_DATA_DIR"

# the test share of a task whose release has no train.json (HC3), see `split_by_prompt`
DERIVED_TEST_FRACTION = 0.2

# content problems that `read_split` filters (or raises on), in the order they are checked
FILTER_REASONS = ("empty_chosen", "empty_rejected", "chosen_equals_rejected")


class DataError(ValueError):
    """Bad or missing data. The message names the file and, where relevant, the record index and key."""


class TaskUnavailable(DataError):
    """The task has no data in the data directory (no test.json)."""


def task_name(name: str) -> str:
    """The task's name (its folder in the release) for a task name or short name ("harmless");
    DataError listing the known ones otherwise."""
    for task in TASKS.values():
        if name in (task.name, task.short):
            return task.name
    known = ", ".join(f"{t.name} ({t.short})" for t in TASKS.values())
    raise DataError(f"unknown task {name!r}; known tasks: {known}")


def short_name(name: str) -> str:
    """The short name of a task for tables and figures; a name that is no task stays as it is."""
    task = TASKS.get(name)
    return task.short if task else name


def default_data_dir() -> Path | None:
    """The release directory to use when none is given.

    $LIFEALIGN_DATA_DIR if set (a DataError if it does not exist); otherwise the first existing
    ../shared/data/lifealign-release relative to the current directory and to the repository root;
    otherwise None.
    """
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise DataError(f"{path}: ${DATA_DIR_ENV} is set but this directory does not exist")
        return path.resolve()
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (base / RELEASE_DIRNAME).is_dir():
            return (base / RELEASE_DIRNAME).resolve()
    return None


def data_dir(given=None) -> Path:
    """`given`, else `default_data_dir()`; a DataError saying how to get one when there is neither."""
    path = Path(given) if given else default_data_dir()
    if path is None:
        raise DataError(f"no data directory: set data.dir, or ${DATA_DIR_ENV}, to a folder in the release format "
                        "(see README), or run `make data`")
    return path


def git_blob_sha1(data: bytes) -> str:
    """SHA-1 of `data` as git stores it as a blob (what `git hash-object` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def download_release(dest: Path, files: list[tuple[str, str]] | None = None, base_url: str = UPSTREAM_URL,
                     commit: str = UPSTREAM_COMMIT, timeout: float = 60,
                     expected: dict[tuple[str, str], str] | None = None) -> list[Path]:
    """Download official files to dest/<task>/<split>.json, each verified before it lands.

    files: (task, split) pairs, default all of BLOB_SHA1. base_url is a format string with
    {commit}, {task} and {split}. expected overrides BLOB_SHA1 (tests). A file already present with
    the right SHA-1 is skipped; one with a wrong SHA-1 is replaced (with a warning). A download is
    written (atomically) only when its git blob SHA-1 matches, so a failed or corrupted download
    leaves no file behind. Any failure raises DataError naming the URL. Returns the paths of all
    requested files.
    """
    table = BLOB_SHA1 if expected is None else expected
    paths = []
    for task, split in list(table) if files is None else files:
        url = base_url.format(commit=commit, task=task, split=split)
        if (task, split) not in table:
            raise DataError(f"{url}: no expected SHA-1 for ({task!r}, {split!r}); refusing an unverified file")
        want = table[(task, split)]
        path = Path(dest) / task / f"{split}.json"
        paths.append(path)
        if path.exists():
            have = git_blob_sha1(path.read_bytes())
            if have == want:
                continue
            warnings.warn(f"{path}: SHA-1 {have} is not the official {want}; downloading it again", stacklevel=2)
        data = _fetch(url, timeout)
        got = git_blob_sha1(data)
        if got != want:
            raise DataError(f"{url}: SHA-1 mismatch: expected {want}, got {got} ({len(data)} bytes); file not written")
        write_bytes(path, data)
    return paths


def _fetch(url: str, timeout: float) -> bytes:
    """GET url, turning every failure into a DataError that names it."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as e:
        raise DataError(f"{url}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:  # includes timeouts
        raise DataError(f"{url}: download failed: {getattr(e, 'reason', e)}") from e


def read_split(path: Path, on_invalid: str = "filter") -> tuple[list[dict], dict]:
    """Read one release file into records, checking structure and content.

    Returns (records, report). Each record is {"prompt": query, "chosen", "rejected", "index"},
    index being its position in the file; records stay in file order.

    Structural problems (a missing file, invalid UTF-8 or JSON, anything but an array of objects with
    string "query", "chosen" and "rejected"; extra keys are ignored) are always a DataError naming
    the file and, where it applies, the record index and key.

    Content problems, checked in this order and counted under the first that applies:
    "empty_chosen" / "empty_rejected" (empty or whitespace-only), "chosen_equals_rejected" (equal
    after stripping surrounding whitespace). on_invalid="filter" drops such records and counts them
    in the report (with their indices); on_invalid="error" raises a DataError on the first one.

    report = {"file", "records" (in the file), "kept", "filtered": {reason: count},
              "filtered_indices": {reason: [index, ...]}}
    """
    if on_invalid not in ("filter", "error"):
        raise ValueError(f"on_invalid must be 'filter' or 'error', got {on_invalid!r}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        rows = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 at byte {e.start}: {e.reason}") from e
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno} (char {e.pos})") from e
    if not isinstance(rows, list):
        raise DataError(f"{path}: top level must be a JSON array of records, got {type(rows).__name__}")

    records = []
    filtered_indices = {reason: [] for reason in FILTER_REASONS}
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path}: record {i}: must be a JSON object, got {type(row).__name__}")
        for key in ("query", "chosen", "rejected"):
            if key not in row:
                raise DataError(f"{path}: record {i}: missing key {key!r}")
            if not isinstance(row[key], str):
                raise DataError(f"{path}: record {i}: key {key!r} must be a string, got {type(row[key]).__name__}")
        chosen, rejected = row["chosen"].strip(), row["rejected"].strip()
        reason = ("empty_chosen" if not chosen else "empty_rejected" if not rejected
                  else "chosen_equals_rejected" if chosen == rejected else None)
        if reason is None:
            records.append({"prompt": row["query"], "chosen": row["chosen"], "rejected": row["rejected"], "index": i})
        elif on_invalid == "error":
            raise DataError(f"{path}: record {i}: {reason} (on_invalid='error')")
        else:
            filtered_indices[reason].append(i)
    return records, {"file": str(path), "records": len(rows), "kept": len(records),
                     "filtered": {reason: len(indices) for reason, indices in filtered_indices.items()},
                     "filtered_indices": filtered_indices}


@dataclass
class TaskData:
    name: str
    train: list[dict]
    test: list[dict]
    report: dict = field(default_factory=dict)


def split_by_prompt(records: list[dict],
                    test_fraction: float = DERIVED_TEST_FRACTION) -> tuple[list[dict], list[dict]]:
    """Deterministic (train, test) split of one file's records, grouped by prompt.

    Records are sorted by (sha1 of the prompt text, index); the first max(1, int(n * test_fraction))
    go to test, the cut then moved forward past any records sharing the last test prompt, so no
    prompt is in both halves; the rest go to train. Both halves are returned in file order.
    """
    if not records:
        return [], []
    ranked = sorted(records, key=lambda r: (hashlib.sha1(r["prompt"].encode("utf-8")).hexdigest(), r["index"]))
    cut = max(1, int(len(ranked) * test_fraction))
    while cut < len(ranked) and ranked[cut]["prompt"] == ranked[cut - 1]["prompt"]:
        cut += 1
    return sorted(ranked[cut:], key=itemgetter("index")), sorted(ranked[:cut], key=itemgetter("index"))


def _subsample(records: list[dict], n: int | None, seed: int, name: str, split: str) -> tuple[list, str | None]:
    """n records drawn with random.Random(f"{seed}:{name}:{split}"), kept in file order, and a note
    when fewer were available; all records if n is None or too big."""
    if n is None or n == len(records):
        return records, None
    if n < 0:
        raise ValueError(f"n_{split} must be >= 0 or None, got {n}")
    if n > len(records):
        return records, f"{split}: asked for {n} records, only {len(records)} available; using all"
    picked = sorted(random.Random(f"{seed}:{name}:{split}").sample(range(len(records)), n))
    return [records[i] for i in picked], None


def load_task(name: str, data_dir: Path, n_train: int | None = None, n_test: int | None = None, seed: int = 0,
              on_invalid: str = "filter") -> TaskData:
    """Load one task's train and test records (see `read_split` for checks and record format).

    name: a task name or its short name. A task without data_dir/<task>/test.json raises
    TaskUnavailable; an unknown name raises DataError. Without train.json (HC3 in the release),
    train and test are `split_by_prompt` of the filtered test.json, said in report["notes"].

    n_train / n_test: deterministic subsample of the filtered records with
    random.Random(f"{seed}:{name}:{split}").sample, kept in file order; None = all; more than
    available = all, with a note.

    report = {"task", "notes": [str],
              "train"/"test": read_split's report of the file the split came from, plus
              "split_from_test" (bool), "available" (after filtering and splitting) and "used"
              (after subsampling)}. When split from test.json, both carry that file's counts.
    """
    name = task_name(name)
    train_path, test_path = Path(data_dir) / name / "train.json", Path(data_dir) / name / "test.json"
    if not test_path.is_file():
        raise TaskUnavailable(f"{test_path}: file not found; task {name!r} has no data in {data_dir}")

    notes = []
    test, test_report = read_split(test_path, on_invalid)
    derived = not train_path.is_file()
    if derived:
        train, test = split_by_prompt(test, DERIVED_TEST_FRACTION)
        train_report = test_report
        notes.append(f"{train_path} is not available: train and test are a deterministic split of {test_path.name} "
                     f"by prompt (records sorted by sha1 of the prompt text, first {DERIVED_TEST_FRACTION:.0%} -> "
                     f"test, rest -> train; no prompt in both): {len(train)} train, {len(test)} test")
    else:
        train, train_report = read_split(train_path, on_invalid)
        overlap = {r["prompt"] for r in train} & {r["prompt"] for r in test}
        if overlap:
            notes.append(f"{len(overlap)} test prompt(s) also occur in train (as released; not removed)")
    for rep in [test_report] if derived else [train_report, test_report]:
        if sum(rep["filtered"].values()):
            counts = ", ".join(f"{k} {v}" for k, v in rep["filtered"].items() if v)
            notes.append(f"{rep['file']}: {sum(rep['filtered'].values())} record(s) filtered out ({counts})")

    report = {"task": name, "notes": notes}
    picked = {}
    for split, records, n, rep in (("train", train, n_train, train_report), ("test", test, n_test, test_report)):
        picked[split], note = _subsample(records, n, seed, name, split)
        if note:
            notes.append(note)
        report[split] = dict(rep, split_from_test=derived, available=len(records), used=len(picked[split]))
    return TaskData(name=name, train=picked["train"], test=picked["test"], report=report)


def resolve_order(order: str | list[str], data_dir: Path) -> tuple[list[str], list[dict]]:
    """The tasks of an order that have data, in order, and the dropped ones with a reason.

    order: a key of ORDERS or a list of task names (short names accepted); unknown names raise
    DataError naming the allowed values. Each task without data_dir/<task>/test.json is dropped
    with a warning. Returns (names, dropped), dropped = [{"task": name, "reason": str}].
    """
    if isinstance(order, str) and order not in ORDERS:
        raise DataError(f"unknown order {order!r}; allowed: {', '.join(ORDERS)} or a list of task names")
    names = ORDERS[order] if isinstance(order, str) else [task_name(n) for n in order]
    kept, dropped = [], []
    for name in names:
        test_path = Path(data_dir) / name / "test.json"
        if test_path.is_file():
            kept.append(name)
            continue
        reason = f"no data: {test_path} not found (download_release can fetch the official files)"
        dropped.append({"task": name, "reason": reason})
        warnings.warn(f"dropping task {name!r} from the order: {reason}", stacklevel=2)
    return kept, dropped
