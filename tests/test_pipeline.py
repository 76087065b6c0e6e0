"""The reproduction pipeline: profiles and grids, skipping finished runs, notebook stripping, data
materialisation, and the whole `dvc repro` of the smoke profile in a temporary copy of the repo."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lifealign import pipeline
from lifealign.config import ConfigError
from lifealign.data import DataError
from lifealign.run_code import RUN_CODE_VERSION

ROOT = Path(__file__).resolve().parents[1]


def test_every_profile_expands_to_valid_runs():
    params = pipeline.load_params(ROOT / "params.yaml")
    assert params["profile"] == "cpu"  # the default profile: the committed grid
    for name in ("smoke", "cpu", "quick", "paper"):
        _, profile = pipeline.active_profile(params, name)
        specs = [s for g in pipeline.GROUPS for s in pipeline.grid(profile, g)]
        assert specs and len({(s.group, s.id) for s in specs}) == len(specs)
        # dvc.yaml tracks profiles.<profile>.<group> of every group: a missing key stops `dvc repro`.
        assert set(pipeline.GROUPS) <= set(profile), f"profile {name} lacks {set(pipeline.GROUPS) - set(profile)}"
        for spec in specs[:3] + specs[-2:]:
            cfg = pipeline.run_config(name, spec, ROOT)  # every config resolves
            assert cfg.method.name == spec.method and cfg.data.dir == "data" and cfg.seed == spec.seed
            assert cfg.out == f"runs/{name}/{spec.group}/{spec.id}"


def test_grid_is_a_product_with_sweeps_and_no_repeats():
    profile = {"matrix": [{"methods": ["seqft", "er"], "orders": ["order1", "order2"], "seeds": [0, 1]},
                          {"methods": ["er"], "orders": ["order1"], "seeds": [0]}],
               "sensitivity": [{"methods": ["lifealign"], "seeds": [3], "sweep": {"method.slmc_lambda": [0.0, 1.0]}}]}
    matrix = pipeline.grid(profile, "matrix")
    assert len(matrix) == 8 and matrix[0].id == "seqft-order1-s0" and matrix[-1].id == "er-order2-s1"
    sweep = pipeline.grid(profile, "sensitivity")
    assert [s.id for s in sweep] == ["lifealign-s3-slmc_lambda0.0", "lifealign-s3-slmc_lambda1.0"]
    assert ("method.slmc_lambda", 1.0) in sweep[1].overrides() and all(k != "data.order" for k, _ in sweep[1].overrides())
    assert pipeline.grid({}, "orders") == []
    with pytest.raises(ConfigError, match=r"matrix\[0\] has unknown keys \['seed'\]"):
        pipeline.grid({"matrix": [{"methods": ["er"], "seed": [0]}]}, "matrix")
    with pytest.raises(ConfigError, match="unknown group"):
        pipeline.grid(profile, "nonsense")


def test_a_named_order_with_tasks_left_out_keeps_its_name():
    from lifealign.runs import order_name
    assert order_name("order2") == "order2"
    # The quick profile's tasks keep order1's sequence; TruthfulQA before HC3 is order2's.
    assert order_name(["hh-rlhf-harmless-base", "safe-rlhf", "TruthfulQA"]) == "order1"
    assert order_name(["TruthfulQA", "HC3"]) == "order2"
    assert order_name(["safe-rlhf", "HC3", "TruthfulQA"]) == "custom"


def test_active_profile_from_argument_environment_or_file(monkeypatch):
    params = {"profile": "cpu", "profiles": {"cpu": {}, "quick": {}}}
    monkeypatch.delenv(pipeline.PROFILE_ENV, raising=False)
    assert pipeline.active_profile(params)[0] == "cpu"
    monkeypatch.setenv(pipeline.PROFILE_ENV, "quick")
    assert pipeline.active_profile(params)[0] == "quick"
    assert pipeline.active_profile(params, "cpu")[0] == "cpu"
    with pytest.raises(ConfigError, match="profile 'gpu' is not defined; defined: cpu, quick"):
        pipeline.active_profile(params, "gpu")


def test_use_profile_changes_only_the_profile_line(tmp_path):
    text = "# keep me\nprofile: cpu  # a comment\nprofiles:\n  cpu: {}\n  quick: {}\n"
    (tmp_path / "params.yaml").write_text(text)
    pipeline.use_profile("quick", tmp_path)
    assert (tmp_path / "params.yaml").read_text() == text.replace("profile: cpu  # a comment", "profile: quick")
    with pytest.raises(ConfigError, match="not defined"):
        pipeline.use_profile("paper", tmp_path)


def _fake_repo(tmp_path):
    """configs/, notebooks/experiment.ipynb and the package, as the pipeline reads them."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    (tmp_path / "notebooks").mkdir()
    shutil.copy(ROOT / "notebooks" / "experiment.ipynb", tmp_path / "notebooks")
    shutil.copytree(ROOT / "src" / "lifealign", tmp_path / "src" / "lifealign")
    return tmp_path


def test_a_run_is_done_only_with_the_same_config_and_run_code_version(tmp_path, monkeypatch):
    root = _fake_repo(tmp_path)
    spec = pipeline.RunSpec("matrix", "er", "order1", 0)
    folder = pipeline.results_dir("smoke", spec, root)
    assert pipeline.run_state("smoke", spec, root) == "missing"
    folder.mkdir(parents=True)
    config = pipeline.run_config("smoke", spec, root).to_dict()
    provenance = {"run_code_version": RUN_CODE_VERSION}
    (folder / "results.json").write_text(json.dumps({"config": dict(config, out="elsewhere", progress=True)}))
    (folder / "provenance.json").write_text(json.dumps(provenance))
    assert pipeline.is_done("smoke", spec, root)  # out / progress do not matter
    config["pref"]["lr"] = 0.5
    (folder / "results.json").write_text(json.dumps({"config": config}))
    assert pipeline.run_state("smoke", spec, root) == "stale"  # another config
    (folder / "results.json").write_text(json.dumps({"config": pipeline.run_config("smoke", spec, root).to_dict()}))
    assert pipeline.is_done("smoke", spec, root)
    # A change of code that keeps the numbers (and so the version) keeps the run: a comment in runner.py.
    with open(ROOT / "src" / "lifealign" / "runner.py") as f:
        (root / "src" / "lifealign" / "runner.py").write_text(f.read() + "\n# a comment\n")
    assert pipeline.is_done("smoke", spec, root)
    monkeypatch.setattr(pipeline, "RUN_CODE_VERSION", RUN_CODE_VERSION + 1)  # numbers moved: version bumped
    assert pipeline.run_state("smoke", spec, root) == "stale"
    (folder / "provenance.json").write_text(json.dumps({"run_code": "b7a35f00ebab0a9c"}))  # before versions
    assert pipeline.run_state("smoke", spec, root) == "stale"


def test_experiment_stages_depend_on_the_run_code_version_only():
    """dvc.yaml's experiment stages rerun (and skip what is done) when the run-code version, the
    profile's config, the data or the experiment notebook change; a refactor of the run code that
    keeps the goldens, or a report change, reruns nothing."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    deps = {"data", "configs/${profile}.yaml", "notebooks/experiment.ipynb", "results/${profile}/model.json",
            "src/lifealign/run_code.py"}
    for group in pipeline.GROUPS:
        assert set(stages[group]["deps"]) == deps, f"stage {group}: {sorted(set(stages[group]['deps']) ^ deps)}"
        assert stages[group]["cmd"] == f"python -m lifealign.pipeline run {group}"
    assert "__pycache__/" in (ROOT / ".dvcignore").read_text()  # bytecode is no dependency


def test_run_group_can_run_chosen_runs_only(tmp_path, monkeypatch):
    root = _fake_repo(tmp_path)
    shutil.copy(ROOT / "params.yaml", root)
    ran = []
    monkeypatch.setattr(pipeline, "run_one", lambda profile, spec, root: ran.append(spec.id))
    pipeline.run_group("matrix", "smoke", root=root, log=lambda line: None, only=["seqft-order1-s1", "mtl-order1-s0"])
    assert ran == ["seqft-order1-s1", "mtl-order1-s0"]  # in the grid's order, the others untouched
    with pytest.raises(ConfigError, match="no run er-order9-s0"):
        pipeline.run_group("matrix", "smoke", root=root, only=["er-order9-s0"])
    assert ran == ["seqft-order1-s1", "mtl-order1-s0"]


def test_run_grid_goes_by_tier_then_seed_and_commits_each_run(tmp_path, monkeypatch):
    """scripts/run_grid.py: tier 1 before tier 2, seeds interleaved within a tier, done runs skipped,
    runs claimed by another worker left to it, this clone's own claims resumed first, and each finished
    run committed alone."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import run_grid
    profile = {"matrix": [{"methods": ["seqft", "er"], "orders": ["order1"], "seeds": [0, 1], "tier": 1},
                          {"methods": ["ewc"], "orders": ["order1"], "seeds": [0], "tier": 3}],
               "orders": [{"methods": ["er"], "orders": ["order2"], "seeds": [0, 1], "tier": 2}],
               "sensitivity": [{"methods": ["lifealign"], "orders": ["order1"], "seeds": [0],
                                "sweep": {"method.slmc_lambda": [0.0]}}]}  # no tier: tier 1
    order = [f"{s.group}/{s.id}" for s in run_grid.ordered_runs(profile)]
    assert order == ["matrix/seqft-order1-s0", "matrix/er-order1-s0", "sensitivity/lifealign-order1-s0-slmc_lambda0.0",
                     "matrix/seqft-order1-s1", "matrix/er-order1-s1", "orders/er-order2-s0", "orders/er-order2-s1",
                     "matrix/ewc-order1-s0"]

    root = _fake_repo(tmp_path)
    (root / "params.yaml").write_text(yaml.safe_dump({"profile": "smoke", "profiles": {"smoke": profile}}))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "start"],
                   cwd=root, check=True)
    monkeypatch.setattr(run_grid, "ROOT", root)
    monkeypatch.setenv("GIT_AUTHOR_NAME", "t"), monkeypatch.setenv("GIT_AUTHOR_EMAIL", "t@t")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "t"), monkeypatch.setenv("GIT_COMMITTER_EMAIL", "t@t")
    ran = []

    def fake_run(profile_name, spec, root):
        ran.append(spec.id)
        folder = pipeline.results_dir(profile_name, spec, root)
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps({"config": pipeline.run_config(profile_name, spec, root).to_dict()}))
        (folder / "provenance.json").write_text(json.dumps({"run_code_version": RUN_CODE_VERSION}))

    monkeypatch.setattr(pipeline, "run_one", fake_run)
    (root / "untracked.txt").write_text("not part of any run")
    claims = tmp_path / "claims"
    claims.mkdir()
    (claims / "matrix+seqft-order1-s0").write_text("/elsewhere/other-clone")
    (claims / "matrix+seqft-order1-s1").write_text(str(root))  # claimed here before a restart
    started = pipeline.grid(profile, "sensitivity")[0]
    pipeline.run_dir("smoke", started, root).mkdir(parents=True)  # started here, claimed by nobody yet
    run_grid.main(["--dry-run", "--claims", str(claims)])  # lists, runs and claims nothing
    assert ran == [] and len(list(claims.iterdir())) == 2
    run_grid.main(["--commit", "--max-tier", "1", "--claims", str(claims)])
    assert ran == ["lifealign-order1-s0-slmc_lambda0.0", "seqft-order1-s1", "er-order1-s0", "er-order1-s1"]
    assert (claims / "matrix+er-order1-s1").read_text() == str(root)
    ran.clear()
    run_grid.main(["--commit", "--max-tier", "2"])
    assert ran == ["seqft-order1-s0", "er-order2-s0", "er-order2-s1"]  # done runs skipped; no claims: all
    log = subprocess.run(["git", "log", "--format=%s", "--name-only"], cwd=root, capture_output=True, text=True).stdout
    assert log.count("smoke grid: ") == 7 and "untracked.txt" not in log
    assert "smoke grid: orders/er-order2-s1" in log and "results/smoke/orders/er-order2-s1/results.json" in log


def test_strip_notebook_drops_what_changes_between_executions(tmp_path):
    nb = {"cells": [{"cell_type": "code", "id": "f00d1e", "source": [], "execution_count": 1,
                     "metadata": {"papermill": {"duration": 1.5, "start_time": "2026"}, "execution": {"x": 1},
                                  "tags": ["parameters"]},
                     "outputs": [{"output_type": "stream", "name": "stdout", "text": ["hi\n"]}]}],
          "metadata": {"papermill": {"start_time": "2026-11-30", "duration": 3.0}, "kernelspec": {"name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "x.ipynb"
    path.write_text(json.dumps(nb))
    pipeline.strip_notebook(path)
    out = json.loads(path.read_text())
    assert "papermill" not in out["metadata"] and out["metadata"]["kernelspec"] == {"name": "python3"}
    cell = out["cells"][0]
    assert cell["id"] == "cell-0" and cell["metadata"] == {"tags": ["parameters"]}
    assert cell["outputs"][0]["text"] == ["hi\n"]
    first = path.read_bytes()
    pipeline.strip_notebook(path)
    assert path.read_bytes() == first


def test_materialize_data_copies_the_release_or_says_what_to_do(fake_release, tmp_path, monkeypatch):
    monkeypatch.setenv("LIFEALIGN_DATA_DIR", str(fake_release))
    dest = tmp_path / "data"
    assert "copied" in pipeline.materialize_data(dest)
    files = sorted(p.relative_to(fake_release) for p in fake_release.rglob("*.json"))
    assert files and sorted(p.relative_to(dest) for p in dest.rglob("*.json")) == files
    assert all((dest / f).read_bytes() == (fake_release / f).read_bytes() for f in files)

    monkeypatch.delenv("LIFEALIGN_DATA_DIR")
    monkeypatch.setattr("lifealign.data.default_data_dir", lambda: None)

    def offline(dest, **kw):
        raise DataError("https://raw.githubusercontent.com/...: connection refused")

    monkeypatch.setattr("lifealign.data.download_release", offline)
    with pytest.raises(DataError, match="set LIFEALIGN_DATA_DIR.*connection refused"):
        pipeline.materialize_data(tmp_path / "elsewhere")


def _data_dir():
    from lifealign.data import default_data_dir

    try:
        return default_data_dir()
    except DataError:
        return None


def _run(cmd, cwd, env, timeout=1800):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


@pytest.mark.slow  # the whole smoke pipeline twice, ~5 minutes
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_smoke_pipeline_end_to_end(tmp_path):
    """`dvc repro` of the smoke profile in a copy of the repository: every stage runs, writes its
    committed outputs and stripped notebooks; a second `dvc repro` reruns nothing; a removed run's
    results are recomputed alone."""
    data = _data_dir()
    if data is None:
        pytest.skip("no data release (set LIFEALIGN_DATA_DIR)")
    repo = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        src = ROOT / name
        if src.is_file() and not name.startswith(("results/", "runs/")):
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / name)
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ["PATH"], LIFEALIGN_DATA_DIR=str(data),
               PYTHONPATH=str(repo / "src"),  # the copy's code, not the installed checkout's
               LIFEALIGN_CACHE=str(tmp_path / "cache"), DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    env.pop(pipeline.PROFILE_ENV, None)
    dvc = [str(Path(bin_dir) / "dvc")]
    _run(["git", "init", "-q"], repo, env)
    _run([sys.executable, "-m", "lifealign.pipeline", "use", "smoke"], repo, env)
    _run([sys.executable, "-m", "lifealign.pipeline", "data"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "smoke"], repo, env)

    log = _run(dvc + ["repro", "--allow-missing"], repo, env)
    out = repo / "results" / "smoke"
    profile = yaml.safe_load((repo / "params.yaml").read_text())["profiles"]["smoke"]
    for group in pipeline.GROUPS:
        for spec in pipeline.grid(profile, group):
            folder = out / group / spec.id
            assert (folder / "results.json").exists() and (folder / "provenance.json").exists(), log[-3000:]
            assert (folder / "figures" / "matrices.png").stat().st_size > 0
    for name in ("data", "method", "report"):
        nb = json.loads((out / "notebooks" / f"{name}.ipynb").read_text())
        assert "papermill" not in nb["metadata"] and all(c["id"] == f"cell-{i}" for i, c in enumerate(nb["cells"]))
        errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors
    report = out / "report"
    for name in ("main_table", "judge_free", "ablation", "orders", "sensitivity", "verdicts", "compute"):
        assert (report / f"{name}.md").read_text().count("|") > 4
    for name in ("heatmaps", "forgetting", "orders", "sensitivity"):
        assert (report / "figures" / f"{name}.png").stat().st_size > 0
    assert "SeqFT" in (report / "main_table.md").read_text() and "paper" in (report / "main_table.md").read_text()
    assert (out / "data" / "sizes.md").exists() and (out / "method" / "focal.png").exists()
    before = {p: p.read_bytes() for p in out.rglob("*.ipynb")}

    log = _run(dvc + ["repro", "--allow-missing"], repo, env)  # nothing changed: nothing runs
    assert "Running stage" not in log, log[-3000:]
    assert {p: p.read_bytes() for p in out.rglob("*.ipynb")} == before
    _run(dvc + ["repro", "--allow-missing", "-f", "-s", "report"], repo, env)  # rerun: the same bytes
    assert (out / "notebooks" / "report.ipynb").read_bytes() == before[out / "notebooks" / "report.ipynb"]

    # A fresh clone of the committed results and dvc.lock, without DVC cache or runs/: up to date.
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "results"], repo, env)
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    clone_env = dict(env, PYTHONPATH=str(clone / "src"))
    _run([sys.executable, "-m", "lifealign.pipeline", "data"], clone, clone_env)
    log = _run(dvc + ["repro", "--allow-missing"], clone, clone_env)
    assert "Running stage" not in log, log[-3000:]
    assert not (clone / "runs").exists()

    # A forced rerun from scratch (results and run folder removed): the same executed notebook.
    removed = pipeline.grid(profile, "orders")[0]
    executed = (out / "orders" / removed.id / "experiment.ipynb").read_bytes()
    shutil.rmtree(out / "orders" / removed.id)
    shutil.rmtree(repo / "runs" / "smoke" / "orders" / removed.id)
    log = _run([sys.executable, "-m", "lifealign.pipeline", "run", "orders", "--profile", "smoke"], repo, env)
    assert f"{removed.id}: running" in log and log.count(": done, skipped") == len(pipeline.grid(profile, "orders")) - 1
    assert (out / "orders" / removed.id / "results.json").exists()
    assert (out / "orders" / removed.id / "experiment.ipynb").read_bytes() == executed
    run_log = (repo / "runs" / "smoke" / "orders" / removed.id / "run.log").read_text()
    assert "task 1/" in run_log and "run finished" in run_log
