"""Tests of lifealign.data: reading, checking, splitting, subsampling, orders, downloads.

Almost all use small fake release folders in tmp_path; the few that read the shared release skip
when it is absent.
"""

import functools
import http.server
import json
import threading

import pytest

from lifealign import data
from lifealign.data import (
    BLOB_SHA1, ORDERS, TASKS, DataError, TaskUnavailable, default_data_dir, download_release,
    git_blob_sha1, load_task, read_split, resolve_order, short_name, task_name,
)
from lifealign.strategies.replay import Replay

try:
    REAL = default_data_dir()
except DataError:  # $LIFEALIGN_DATA_DIR points nowhere: the real-data tests skip
    REAL = None
needs_real = pytest.mark.skipif(REAL is None, reason="shared lifealign-release folder not found")


def rec(i, **kw):
    r = {"query": f"question {i}?", "chosen": f"good answer {i}", "rejected": f"bad answer {i}"}
    r.update(kw)
    return r


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return path


def make_release(root, tasks):
    """tasks: {task: {split: [records]}} -> root/<task>/<split>.json"""
    for task, splits in tasks.items():
        for split, rows in splits.items():
            write(root / task / f"{split}.json", rows)
    return root


# ---------------------------------------------------------------- constants


def test_tasks_and_orders_follow_the_spec():
    assert list(TASKS) == ["Capybara-Preferences", "HC3", "hh-rlhf-harmless-base",
                           "hh-rlhf-helpful-base", "safe-rlhf", "TruthfulQA"]
    assert [t.short for t in TASKS.values()] == ["capybara", "hc3", "harmless", "helpful", "safe-rlhf", "truthfulqa"]
    T = list(TASKS)
    t = lambda *ks: [T[k - 1] for k in ks]  # noqa: E731
    assert ORDERS == {"order1": t(1, 2, 3, 4, 5, 6), "order2": t(6, 5, 4, 3, 2, 1), "order3": t(3, 1, 6, 4, 2, 5)}
    assert set(BLOB_SHA1) == {(task, s) for task in TASKS for s in ("train", "test")}
    with pytest.raises(Exception):
        TASKS["HC3"].name = "x"  # frozen


def test_git_blob_sha1_matches_git():
    # `printf 'hello\n' | git hash-object --stdin`
    assert git_blob_sha1(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"
    assert git_blob_sha1(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"


# ---------------------------------------------------------------- read_split: structure


@pytest.mark.parametrize("content, needles", [
    ('{"query": "q", "chosen": "a", "rejected": "b"}', ["JSON array", "dict"]),
    ('[{"query": "q", "chosen": "a", "rejected": "b"},\n {"query": "q" "chosen"}]', ["not valid JSON", "line 2", "column"]),
    ([rec(0), rec(1), {"query": "q", "chosen": "a"}], ["record 2", "'rejected'", "missing"]),
    ([rec(0), rec(1, chosen=3)], ["record 1", "'chosen'", "int"]),
    ([rec(0), rec(1, query=None)], ["record 1", "'query'", "NoneType"]),
    ([rec(0), ["q", "a", "b"]], ["record 1", "object", "list"]),
], ids=["not-an-array", "bad-json", "missing-key", "non-string", "null-query", "non-object"])
def test_structural_problems_raise_naming_file_and_record(tmp_path, content, needles):
    path = write(tmp_path / "t" / "train.json", content)
    for mode in ("filter", "error"):
        with pytest.raises(DataError) as e:
            read_split(path, on_invalid=mode)
        msg = str(e.value)
        assert str(path) in msg
        for needle in needles:
            assert needle in msg, (needle, msg)


def test_missing_file_and_bad_utf8(tmp_path):
    with pytest.raises(DataError, match="not found") as e:
        read_split(tmp_path / "nope.json")
    assert "nope.json" in str(e.value)
    path = tmp_path / "latin1.json"
    path.write_bytes(b'[{"query": "caf\xe9", "chosen": "a", "rejected": "b"}]')
    with pytest.raises(DataError, match="UTF-8") as e:
        read_split(path)
    assert str(path) in str(e.value)
    with pytest.raises(ValueError, match="on_invalid"):
        read_split(path, on_invalid="drop")


# ---------------------------------------------------------------- read_split: content


def test_records_format_and_file_order(tmp_path):
    path = write(tmp_path / "a.json", [rec(i, extra=1) for i in range(5)])
    records, report = read_split(path)
    assert [r["index"] for r in records] == [0, 1, 2, 3, 4]
    assert records[2] == {"prompt": "question 2?", "chosen": "good answer 2", "rejected": "bad answer 2", "index": 2}
    assert report == {"file": str(path), "records": 5, "kept": 5,
                      "filtered": {"empty_chosen": 0, "empty_rejected": 0, "chosen_equals_rejected": 0},
                      "filtered_indices": {"empty_chosen": [], "empty_rejected": [], "chosen_equals_rejected": []}}


def test_content_problems_are_counted_never_silently_dropped(tmp_path):
    rows = [rec(0), rec(1, chosen=""), rec(2, chosen="  \n"), rec(3, rejected="\t"),
            rec(4, chosen="same", rejected="same "), rec(5), rec(6, chosen="", rejected="")]
    records, report = read_split(write(tmp_path / "a.json", rows))
    assert [r["index"] for r in records] == [0, 5]
    assert report["records"] == 7 and report["kept"] == 2
    assert report["filtered"] == {"empty_chosen": 3, "empty_rejected": 1, "chosen_equals_rejected": 1}
    assert report["filtered_indices"] == {"empty_chosen": [1, 2, 6], "empty_rejected": [3], "chosen_equals_rejected": [4]}
    assert report["kept"] + sum(report["filtered"].values()) == report["records"]


@pytest.mark.parametrize("bad, reason", [
    (rec(1, chosen=" "), "empty_chosen"),
    (rec(1, rejected=""), "empty_rejected"),
    (rec(1, chosen="x", rejected="x"), "chosen_equals_rejected"),
])
def test_content_problems_raise_in_error_mode(tmp_path, bad, reason):
    path = write(tmp_path / "a.json", [rec(0), bad, rec(2)])
    with pytest.raises(DataError) as e:
        read_split(path, on_invalid="error")
    assert str(path) in str(e.value) and "record 1" in str(e.value) and reason in str(e.value)


# ---------------------------------------------------------------- load_task


def test_load_task_errors(tmp_path):
    with pytest.raises(DataError, match="unknown task") as e:
        load_task("hh-rlhf", tmp_path)
    assert "TruthfulQA" in str(e.value) and "safe-rlhf" in str(e.value)
    make_release(tmp_path, {"TruthfulQA": {"train": [rec(0)]}})  # train without test
    with pytest.raises(TaskUnavailable, match="test.json"):
        load_task("TruthfulQA", tmp_path)
    with pytest.raises(TaskUnavailable):
        load_task("Capybara-Preferences", tmp_path)
    assert issubclass(TaskUnavailable, DataError)


def test_load_task_full_and_short_name(tmp_path):
    make_release(tmp_path, {"TruthfulQA": {"train": [rec(i) for i in range(10)] + [rec(10, chosen="")],
                                           "test": [rec(i + 100) for i in range(4)] + [rec(3)]}})
    td = load_task("truthfulqa", tmp_path)
    assert td.name == "TruthfulQA"
    assert len(td.train) == 10 and len(td.test) == 5
    rep = td.report
    assert rep["train"]["filtered"]["empty_chosen"] == 1 and rep["train"]["available"] == 10 and rep["train"]["used"] == 10
    assert rep["test"]["records"] == 5 and rep["train"]["split_from_test"] is False
    assert any("1 test prompt(s) also occur in train" in n for n in rep["notes"])
    assert any("empty_chosen 1" in n for n in rep["notes"])


def test_subsampling_is_deterministic_and_keeps_file_order(tmp_path):
    make_release(tmp_path, {"safe-rlhf": {"train": [rec(i) for i in range(200)], "test": [rec(i) for i in range(50)]}})
    a = load_task("safe-rlhf", tmp_path, n_train=30, n_test=10, seed=1)
    b = load_task("safe-rlhf", tmp_path, n_train=30, n_test=10, seed=1)
    c = load_task("safe-rlhf", tmp_path, n_train=30, n_test=10, seed=2)
    idx = lambda rs: [r["index"] for r in rs]  # noqa: E731
    assert idx(a.train) == idx(b.train) and idx(a.test) == idx(b.test)
    assert idx(a.train) != idx(c.train)
    assert len(a.train) == 30 and len(a.test) == 10
    assert idx(a.train) == sorted(idx(a.train)) and idx(a.train) != list(range(30))  # sampled, in file order
    assert a.report["train"]["used"] == 30 and a.report["train"]["available"] == 200
    # train and test draw from different streams
    assert idx(a.test) != idx(a.train)[:10]
    # more than available -> all, with a note
    d = load_task("safe-rlhf", tmp_path, n_test=500)
    assert idx(d.test) == list(range(50)) and any("500" in n and "50 available" in n for n in d.report["notes"])
    assert idx(load_task("safe-rlhf", tmp_path, n_train=0).train) == []


def test_split_from_test_when_train_is_missing(tmp_path):
    rows = [rec(i) for i in range(40)] + [rec(i) for i in range(5)] + [rec(99, rejected="")]  # repeated prompts
    make_release(tmp_path, {"HC3": {"test": rows}})
    a, b = load_task("HC3", tmp_path), load_task("HC3", tmp_path)
    idx = lambda rs: [r["index"] for r in rs]  # noqa: E731
    assert idx(a.train) == idx(b.train) and idx(a.test) == idx(b.test)
    assert {r["prompt"] for r in a.train}.isdisjoint({r["prompt"] for r in a.test})
    assert len(a.train) + len(a.test) == 45  # one filtered
    assert 9 <= len(a.test) <= 11  # 20% of 45, extended past a repeated prompt at most
    assert idx(a.train) == sorted(idx(a.train)) and idx(a.test) == sorted(idx(a.test))
    assert a.report["train"]["split_from_test"] and a.report["test"]["split_from_test"]
    assert a.report["train"]["available"] == len(a.train)
    assert any("deterministic split of test.json by prompt" in n for n in a.report["notes"])
    assert any("empty_rejected 1" in n for n in a.report["notes"])
    # the split does not depend on file order: it is a function of the prompts
    make_release(tmp_path / "rev", {"HC3": {"test": rows[::-1]}})
    rev = load_task("HC3", tmp_path / "rev")
    assert sorted(r["prompt"] for r in rev.test) == sorted(r["prompt"] for r in a.test)


def test_split_gives_at_least_one_test_record(tmp_path):
    make_release(tmp_path, {"HC3": {"test": [rec(0), rec(1)]}})
    td = load_task("HC3", tmp_path)
    assert len(td.test) == 1 and len(td.train) == 1


# ---------------------------------------------------------------- orders, replay, data dir


def test_resolve_order_drops_missing_tasks_with_warning(tmp_path):
    present = {t: {"test": [rec(0)]} for t in TASKS if t not in ("Capybara-Preferences", "safe-rlhf")}
    make_release(tmp_path, present)
    with pytest.warns(UserWarning, match="dropping task") as w:
        names, dropped = resolve_order("order3", tmp_path)
    assert sorted(str(x.message).split("'")[1] for x in w) == ["Capybara-Preferences", "safe-rlhf"]
    assert names == ["hh-rlhf-harmless-base", "TruthfulQA", "hh-rlhf-helpful-base", "HC3"]
    assert [d["task"] for d in dropped] == ["Capybara-Preferences", "safe-rlhf"]
    assert all("test.json" in d["reason"] for d in dropped)
    names, dropped = resolve_order(["TruthfulQA", "hc3"], tmp_path)
    assert names == ["TruthfulQA", "HC3"] and dropped == []


def test_resolve_order_rejects_unknown_names(tmp_path):
    with pytest.raises(DataError, match="order1"):
        resolve_order("order4", tmp_path)
    with pytest.raises(DataError, match="known tasks"):
        resolve_order(["TruthfulQA", "MMLU"], tmp_path)


def test_replay_adds_the_first_fraction_in_file_order():
    def added(rows, fraction=0.2):
        replay = Replay(fraction, cap=10**6)
        assert replay.training_records(None, "pref", "task", rows) == rows  # nothing buffered yet
        return replay.buffers["pref"]

    rows = [{"index": i} for i in range(12)]
    assert added(rows) == rows[:2]
    assert added(rows, 0.5) == rows[:6]
    assert added(rows[:4]) == []
    assert added([{"index": i} for i in range(3000)])[-1]["index"] == 599


def test_task_and_short_names():
    assert task_name("harmless") == "hh-rlhf-harmless-base" == task_name("hh-rlhf-harmless-base")
    assert short_name("hh-rlhf-harmless-base") == "harmless" and short_name("joint") == "joint"
    with pytest.raises(DataError, match="known tasks"):
        task_name("MMLU")


def test_default_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LIFEALIGN_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path.resolve()
    monkeypatch.setenv("LIFEALIGN_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="missing"):
        default_data_dir()
    monkeypatch.delenv("LIFEALIGN_DATA_DIR")
    rel = tmp_path / "repo" / ".." / "shared" / "data" / "lifealign-release"
    (tmp_path / "repo").mkdir()
    rel.mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "repo")
    assert default_data_dir() == rel.resolve()


# ---------------------------------------------------------------- download_release


@pytest.fixture
def http_root(tmp_path, monkeypatch):
    """A local HTTP server on 127.0.0.1 serving tmp_path/'srv'; yields (root, base_url)."""
    root = tmp_path / "srv"
    root.mkdir()
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/{{commit}}/data/{{task}}/{{split}}.json"
    finally:
        server.shutdown()
        server.server_close()


def test_download_good_file_lands_and_is_skipped_next_time(http_root, tmp_path):
    root, url = http_root
    body = json.dumps([rec(0), rec(1)]).encode()
    write(root / "abc123" / "data" / "TruthfulQA" / "test.json", body.decode())
    dest = tmp_path / "dest"
    expected = {("TruthfulQA", "test"): git_blob_sha1(body)}
    paths = download_release(dest, [("TruthfulQA", "test")], base_url=url, commit="abc123", expected=expected)
    assert paths == [dest / "TruthfulQA" / "test.json"]
    assert paths[0].read_bytes() == body
    assert sorted(p.name for p in (dest / "TruthfulQA").iterdir()) == ["test.json"]  # no temp left
    assert len(read_split(paths[0])[0]) == 2
    # already present and right: skipped (the server copy may even vanish)
    (root / "abc123" / "data" / "TruthfulQA" / "test.json").unlink()
    assert download_release(dest, None, base_url=url, commit="abc123", expected=expected) == paths


def test_download_corrupted_file_raises_and_leaves_nothing(http_root, tmp_path):
    root, url = http_root
    body = json.dumps([rec(0)]).encode()
    write(root / "c" / "data" / "HC3" / "train.json", body.decode() + " ")  # one byte off
    dest = tmp_path / "dest"
    with pytest.raises(DataError) as e:
        download_release(dest, [("HC3", "train")], base_url=url, commit="c",
                         expected={("HC3", "train"): git_blob_sha1(body)})
    msg = str(e.value)
    assert "/c/data/HC3/train.json" in msg and git_blob_sha1(body) in msg and git_blob_sha1(body + b" ") in msg
    assert not dest.exists() or not any(dest.rglob("*.json*"))


def test_download_replaces_a_wrong_local_copy_and_cleans_up_on_write_failure(http_root, tmp_path, monkeypatch):
    root, url = http_root
    body = json.dumps([rec(0)]).encode()
    write(root / "c" / "data" / "HC3" / "test.json", body.decode())
    expected = {("HC3", "test"): git_blob_sha1(body)}
    dest = tmp_path / "dest"
    write(dest / "HC3" / "test.json", "[]")
    with pytest.warns(UserWarning, match="not the official"):
        download_release(dest, base_url=url, commit="c", expected=expected)
    assert (dest / "HC3" / "test.json").read_bytes() == body

    def broken_replace(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(data.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        download_release(tmp_path / "dest2", base_url=url, commit="c", expected=expected)
    assert not (tmp_path / "dest2" / "HC3").exists()


def test_download_404_raises_naming_the_url(http_root, tmp_path):
    _, url = http_root
    with pytest.raises(DataError, match="404") as e:
        download_release(tmp_path / "dest", [("safe-rlhf", "test")], base_url=url, commit="zz")
    assert "/zz/data/safe-rlhf/test.json" in str(e.value)
    assert not (tmp_path / "dest").exists() or not any((tmp_path / "dest").rglob("*.json*"))


def test_download_refuses_files_without_expected_sha(tmp_path):
    with pytest.raises(DataError, match="no expected SHA-1"):
        download_release(tmp_path, [("HC3", "valid")])


# ---------------------------------------------------------------- the real release


@needs_real
def test_blob_sha1_matches_the_shared_files():
    checked = 0
    for (task, split), sha in BLOB_SHA1.items():
        path = REAL / task / f"{split}.json"
        if path.exists():
            assert git_blob_sha1(path.read_bytes()) == sha, path
            checked += 1
    assert checked >= 9


@needs_real
def test_real_data_quirks_are_reported():
    safe = load_task("safe-rlhf", REAL)
    assert safe.report["train"]["filtered"]["empty_chosen"] == 13
    assert safe.report["test"]["filtered"]["empty_chosen"] == 1
    assert len(safe.train) == 2985 - 13
    helpful = load_task("hh-rlhf-helpful-base", REAL)
    eq = helpful.report["train"]["filtered"]["chosen_equals_rejected"] + helpful.report["test"]["filtered"]["chosen_equals_rejected"]
    assert eq == 7
    hc3 = load_task("HC3", REAL)
    assert hc3.report["test"]["filtered"]["empty_rejected"] == 14
    assert {r["prompt"] for r in hc3.train}.isdisjoint({r["prompt"] for r in hc3.test})
