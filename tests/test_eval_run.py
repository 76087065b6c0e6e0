"""Evaluation inside the loop: generation metrics after every task, and `lifealign eval RUN_DIR`
adding the LLM judge later (against a fake OpenAI-compatible server) without retraining."""
import json

import pytest

from lifealign.cli import main
from test_judge import FakeServer, ok
from test_run import run_cli

GEN = ["eval.generation=true", "eval.gen_prompts=3", "eval.max_new_tokens=6", "eval.gen_batch_size=3"]


@pytest.fixture(scope="module")
def gen_run(fake_release, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("genrun")
    results = run_cli(fake_release, tmp / "out", tmp / "cache", ["method.name=er", "method.sft=false", *GEN])
    return results, tmp


def test_generation_matrices_written(gen_run):
    results, _ = gen_run
    for metric in ("bleu4", "rougel"):
        m = results["metrics"][metric]
        assert len(m["matrix"]) == 3 and all(len(r) == 3 for r in m["matrix"])  # upper triangle too
        assert all(v is not None and 0 <= v <= 100 for row in m["matrix"] for v in row)
        assert len(m["base"]) == 3 and set(m["summary"]) >= {"last", "ap", "bwt"}
    assert results["decoding"]["strategy"] == "greedy" and results["decoding"]["max_new_tokens"] == 6
    assert "judge" not in results["metrics"] and "avg" not in results["metrics"]


def test_eval_adds_judge_later_and_reuses_generations(gen_run, monkeypatch, capsys):
    results, tmp = gen_run
    out = tmp / "out"
    saved = (out / "tasks" / "01-hh-rlhf-harmless-base" / "generations.json").read_text()
    server = FakeServer()
    try:
        # 4 rows (base + 3 tasks) x 3 tasks x 3 prompts = 36 judged responses; make 2 fail (no score).
        server.default = ok("Fine.\nScore: 6")
        server.play(ok("no verdict here"), ok("still none"))
        monkeypatch.setenv("LIFEALIGN_JUDGE_API_KEY", "sk-test-secret")
        args = ["eval", str(out), "--set", "eval.judge=true", "--set", f"eval.judge_base_url={server.url}",
                "--set", "eval.judge_model=fake-judge", "--set", f"cache_dir={tmp / 'cache'}"]
        assert main(args) == 0
        judged = json.loads((out / "results.json").read_text())
        judge = judged["metrics"]["judge"]
        # unique (prompt, response) pairs only reach the server once: the cache dedups the rest
        assert 0 < server.n <= 36 + 2
        assert sum(sum(r) for r in judge["failures"]) + sum(judge["base_failures"]) == 2
        assert all(v == 60.0 for row in judge["matrix"] for v in row if v is not None)
        assert set(judged["metrics"]["avg"]["summary"]) >= {"last", "ap", "bwt"}
        # the generations were reused, not regenerated; preference scores unchanged
        assert (out / "tasks" / "01-hh-rlhf-harmless-base" / "generations.json").read_text() == saved
        assert judged["metrics"]["reward_accuracy"] == results["metrics"]["reward_accuracy"]
        assert "sk-test-secret" not in (out / "results.json").read_text()
        assert "judge failures per cell" in capsys.readouterr().out
        # a rerun costs nothing but the failed items, which are asked again (unless the same
        # prompt and response was scored in another cell meanwhile), and then all cells are scored
        before = server.n
        assert main(args) == 0
        assert server.n - before <= 2
        rejudged = json.loads((out / "results.json").read_text())["metrics"]["judge"]
        assert sum(sum(r) for r in rejudged["failures"]) + sum(rejudged["base_failures"]) == 0
    finally:
        server.close()


def test_eval_refuses_training_overrides(gen_run, capsys):
    _, tmp = gen_run
    assert main(["eval", str(tmp / "out"), "--set", "pref.lr=1"]) == 2
    assert "may only change eval" in capsys.readouterr().err


def test_judge_without_endpoint_is_a_config_error(gen_run, monkeypatch, capsys):
    _, tmp = gen_run
    monkeypatch.delenv("LIFEALIGN_JUDGE_BASE_URL", raising=False)
    monkeypatch.delenv("LIFEALIGN_JUDGE_MODEL", raising=False)
    assert main(["eval", str(tmp / "out"), "--set", "eval.judge=true"]) == 2
    assert "no judge is configured" in capsys.readouterr().err


def test_base_row_is_cached_across_runs(gen_run, fake_release):
    """A second run of another method with the same model, data, tokenisation and decoding reads the
    base model's row (scores and generations) from the cache instead of generating again."""
    results, tmp = gen_run
    assert results["timings"]["base_row_cache"] == "miss"
    assert len(list((tmp / "cache" / "base-eval").glob("*.json"))) == 1
    again = run_cli(fake_release, tmp / "out2", tmp / "cache",
                    ["method.name=seqft", "method.sft=false", *GEN])
    assert again["timings"]["base_row_cache"] == "hit"
    no_judge = lambda row: {task: {k: v for k, v in scores.items() if not k.startswith("judge")}  # noqa: E731
                            for task, scores in row.items()}  # the judge test above adds its scores to out/
    base_eval = [json.loads((tmp / out / "base_eval.json").read_text()) for out in ("out", "out2")]
    assert no_judge(base_eval[0]) == base_eval[1]
    assert (tmp / "out2" / "base_generations.json").read_text() == (tmp / "out" / "base_generations.json").read_text()
    for metric in ("reward_accuracy", "bleu4", "rougel"):
        assert again["metrics"][metric]["base"] == results["metrics"][metric]["base"]
    # other decoding settings are another row
    third = run_cli(fake_release, tmp / "out3", tmp / "cache",
                    ["method.name=seqft", "method.sft=false", *GEN, "eval.max_new_tokens=5"])
    assert third["timings"]["base_row_cache"] == "miss"


def test_unreachable_judge_stops_before_any_work(gen_run, monkeypatch, capsys):
    """`lifealign eval` with the judge on and no server: one line naming the fix, nothing rewritten."""
    import socket
    _, tmp = gen_run
    out = tmp / "out"
    before = {p: p.read_bytes() for p in out.rglob("*.json")}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["eval", str(out), "--set", "eval.judge=true", "--set", f"eval.judge_base_url=http://127.0.0.1:{port}/v1",
            "--set", "eval.judge_model=m", "--set", f"cache_dir={tmp / 'cache'}"]
    monkeypatch.setattr("lifealign.judge.time.sleep", lambda s: None)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not answer" in err and "start the server" in err
    assert {p: p.read_bytes() for p in out.rglob("*.json")} == before
