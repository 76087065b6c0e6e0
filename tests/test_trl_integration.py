"""FPO, SLMC and replay inside TRL (lifealign.integrations.trl) on the tiny model.

- the TRL path's per-pair FPO loss equals lifealign.losses.fpo_loss on log-probabilities computed
  independently (one plain forward per sequence, reference = the base model), fp32, rtol 1e-5;
  gamma = 0 gives TRL's own DPO loss;
- the SLMC callback's consolidated adapter equals consolidate() applied by hand, and its state
  survives a checkpoint resume;
- the documented example (examples/trl_continual.py) runs: on the tiny model here, on SmolLM2 in
  the slow test.
"""
import importlib.util
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")

from datasets import Dataset  # noqa: E402
from transformers import PrinterCallback  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from lifealign.consolidation import consolidate  # noqa: E402
from lifealign.data import DataError  # noqa: E402
from lifealign.integrations.hf_datasets import load_task_datasets, records_dataset  # noqa: E402
from lifealign.integrations.trl import FPOTrainer, ReplayBuffer, SLMCCallback  # noqa: E402
from lifealign.losses import fpo_loss  # noqa: E402
from lifealign.lora import add_lora, lora_parameters  # noqa: E402
from lifealign.models import build_tiny_model  # noqa: E402
from lifealign.training import encode_records  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, learning_rate=1e-2,
                num_train_epochs=1, max_length=96, use_cpu=True, report_to="none", save_strategy="no",
                logging_strategy="no", disable_tqdm=True, seed=0, beta=0.1, bf16=False)
    return DPOConfig(**{**base, **kw})


def _trained_lora(seed=0):
    """The tiny model with a LoRA adapter whose B matrices are non-zero (a policy unlike the base)."""
    model, tok = build_tiny_model(0)
    torch.manual_seed(seed)
    model = add_lora(model)
    with torch.no_grad():
        for name, p in lora_parameters(model).items():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model, tok


def _plain_logps(model, batch):
    """Summed completion log-probabilities, one unpadded forward per sequence."""
    out = []
    for ids, att, comp in zip(batch["input_ids"], batch["attention_mask"], batch["completion_mask"]):
        n = int(att.sum())
        ids, comp = ids[:n], comp[:n]
        logits = model(input_ids=ids[None]).logits.float()[0, :-1]
        token = torch.log_softmax(logits, -1).gather(-1, ids[1:, None]).squeeze(-1)
        out.append((token * comp[1:]).sum())
    return torch.stack(out)


def _batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def _pairs(fake_release):
    train, _, _ = load_task_datasets("harmless", fake_release)
    return train.select(range(4))


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_trl_per_pair_loss_equals_fpo_loss(fake_release, tmp_path, gamma):
    model, tok = _trained_lora()
    trainer = FPOTrainer(model=model, args=_config(tmp_path), train_dataset=_pairs(fake_release),
                         processing_class=tok, gamma=gamma)
    assert "ref" not in model.peft_config  # the reference is the base model, not a copy of the adapter
    batch = _batch(trainer)
    with torch.no_grad():
        losses, _ = trainer.pair_losses(model, batch)
        chosen, rejected = _plain_logps(model, batch).chunk(2)
        with model.disable_adapter():
            ref_chosen, ref_rejected = _plain_logps(model, batch).chunk(2)
    assert losses.dtype == torch.float32
    expected = fpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.1, gamma=gamma)
    torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-7)
    assert (chosen != ref_chosen).all()  # the adapter matters: the test would see a wrong reference


def test_gamma_zero_is_trl_dpo(fake_release, tmp_path):
    pairs = _pairs(fake_release)
    model, tok = build_tiny_model(0)
    from peft import LoraConfig
    peft = LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    ours = FPOTrainer(model=model, args=_config(tmp_path), train_dataset=pairs, processing_class=tok,
                      peft_config=peft, gamma=0.0)
    batch = _batch(ours)
    with torch.no_grad():
        ours_loss = ours.compute_loss(ours.model, batch)
        theirs = DPOTrainer(model=ours.model, args=_config(tmp_path), train_dataset=pairs, processing_class=tok)
        trl_loss = theirs.compute_loss(theirs.model, batch)
    torch.testing.assert_close(ours_loss, trl_loss, rtol=1e-5, atol=0)


def test_tokenized_rows_with_reference_columns_are_used_as_given(tmp_path):
    model, tok = _trained_lora()
    records = [{"prompt": f"Human: q{i}?\n\nAssistant:", "chosen": "yes " * (i + 1), "rejected": "no",
                "index": i, "ref": (-20.0 - i, -21.0)} for i in range(4)]
    encode_records(tok, records, 64, 32)
    trainer = FPOTrainer(model=model, args=_config(tmp_path), train_dataset=records_dataset(records, tokenized=True),
                         processing_class=tok)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    assert batch["input_ids"][0].tolist()[: len(records[0]["ids"]["prompt"])] == records[0]["ids"]["prompt"]
    with torch.no_grad():
        chosen, rejected, ref_c, ref_r = trainer.pair_logps(model, batch)
    assert ref_c.tolist() == [-20.0, -21.0, -22.0, -23.0] and ref_r.tolist() == [-21.0] * 4


def test_unsupported_loss_settings_are_refused(fake_release, tmp_path):
    model, tok = _trained_lora()
    with pytest.raises(ValueError, match="loss_type"):
        FPOTrainer(model=model, args=_config(tmp_path, loss_type=["ipo"]), train_dataset=_pairs(fake_release),
                   processing_class=tok)


def test_slmc_callback_equals_consolidate_by_hand(fake_release, tmp_path):
    pairs = _pairs(fake_release)
    model, tok = _trained_lora()
    slmc = SLMCCallback(threshold=0.8, lam=0.5)
    history = {}
    for task in range(2):
        before = {n: p.detach().clone() for n, p in lora_parameters(model).items()}
        captured = {}

        class Capture(PrinterCallback):  # the trained weights, just before SLMC rewrites them
            def on_train_end(self, args, state, control, model=None, **kw):
                captured.update({n: p.detach().clone() for n, p in lora_parameters(model).items()})

        trainer = FPOTrainer(model=model, args=_config(tmp_path / str(task)), train_dataset=pairs,
                             processing_class=tok, callbacks=[Capture(), slmc])
        trainer.train()
        for name, start in before.items():
            refined = consolidate(captured[name] - start, history.get(name, []), 0.8, 0.5)
            history.setdefault(name, []).append(refined)
            torch.testing.assert_close(lora_parameters(model)[name], start + refined, rtol=1e-6, atol=1e-7)
        assert len(slmc.reports) == task + 1
    assert slmc.reports[1]["mean_overlap_energy"] > 0  # the second task saw the first one's history


def test_slmc_state_survives_a_checkpoint_resume(fake_release, tmp_path):
    pairs = _pairs(fake_release).select(range(2))
    args = dict(per_device_train_batch_size=1, num_train_epochs=1, save_strategy="steps", save_steps=1)

    def run(resume):
        model, tok = _trained_lora()
        slmc = SLMCCallback()
        torch.manual_seed(0)
        trainer = FPOTrainer(model=model, args=_config(tmp_path / ("a" if not resume else "b"), **args),
                             train_dataset=pairs, processing_class=tok, callbacks=[slmc])
        if resume:  # a first, killed attempt: only its first checkpoint survives
            import shutil
            shutil.copytree(tmp_path / "a" / "out" / "checkpoint-1", tmp_path / "b" / "out" / "checkpoint-1")
            trainer.train(resume_from_checkpoint=True)
        else:
            trainer.train()
        return lora_parameters(model), slmc

    full, full_slmc = run(False)
    assert (tmp_path / "a" / "out" / "checkpoint-1" / "slmc.pt").is_file()
    resumed, resumed_slmc = run(True)
    for name in full:
        torch.testing.assert_close(resumed[name], full[name], rtol=1e-5, atol=1e-6)
    assert resumed_slmc.slmc.history.keys() == full_slmc.slmc.history.keys()


def test_resume_without_slmc_state_is_a_clear_error(fake_release, tmp_path):
    pairs = _pairs(fake_release).select(range(2))
    model, tok = _trained_lora()
    cfg = _config(tmp_path, per_device_train_batch_size=1, save_strategy="steps", save_steps=1)
    FPOTrainer(model=model, args=cfg, train_dataset=pairs, processing_class=tok).train()
    trainer = FPOTrainer(model=model, args=cfg, train_dataset=pairs, processing_class=tok, callbacks=[SLMCCallback()])
    with pytest.raises(FileNotFoundError, match="slmc.pt: no SLMC state"):
        trainer.train(resume_from_checkpoint=True)


def test_replay_buffer_is_the_first_fifth_in_file_order():
    ds = lambda t, n: Dataset.from_list([{"task": t, "index": i} for i in range(n)])  # noqa: E731
    replay = ReplayBuffer(fraction=0.2, cap=3)
    first = replay.next_training_set(ds("a", 10))
    assert len(first) == 10 and len(replay) == 2
    second = replay.next_training_set(ds("b", 10))
    assert [(r["task"], r["index"]) for r in second][-2:] == [("a", 0), ("a", 1)]
    assert len(replay) == 3  # capped: the oldest rows stay
    assert [(r["task"], r["index"]) for r in replay.buffer] == [("a", 0), ("a", 1), ("b", 0)]


def test_release_datasets_keep_our_validation(tmp_path):
    folder = tmp_path / "safe-rlhf"
    folder.mkdir()
    (folder / "test.json").write_text('[{"query": "q", "chosen": "a", "rejected": "a"},'
                                      ' {"query": "q2", "chosen": "a", "rejected": "b"}]')
    (folder / "train.json").write_text('[{"query": "q", "chosen": "a", "rejected": "b"}]')
    train, test, report = load_task_datasets("safe-rlhf", tmp_path)
    assert len(test) == 1 and report["test"]["filtered"]["chosen_equals_rejected"] == 1
    assert test[0]["prompt"] == [{"role": "user", "content": "q2"}] and test[0]["index"] == 1
    (folder / "train.json").write_text('[{"query": "q", "chosen": 3, "rejected": "b"}]')
    with pytest.raises(DataError, match=r"train.json: record 0: key 'chosen' must be a string"):
        load_task_datasets("safe-rlhf", tmp_path)


def _example():
    spec = importlib.util.spec_from_file_location("trl_continual", ROOT / "examples" / "trl_continual.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_runs_on_the_tiny_model(fake_release, tmp_path):
    result = _example().main(["--model", "tiny-random-llama", "--data-dir", str(fake_release),
                              "--n-train", "8", "--n-test", "4", "--out", str(tmp_path / "run")])
    assert [t["task"] for t in result["tasks"]] == ["hh-rlhf-harmless-base", "hh-rlhf-helpful-base", "safe-rlhf"]
    assert [t["train_rows"] for t in result["tasks"]] == [8, 9, 10]  # + replay: 1 row of each earlier task
    assert len(result["accuracy"]) == 3 and all(len(row) == 3 for row in result["accuracy"])
    assert (tmp_path / "run" / "03-safe-rlhf" / "adapter" / "adapter_config.json").is_file()
    assert result["slmc"][1]["mean_overlap_energy"] > 0


@pytest.mark.slow
def test_example_runs_on_smollm2(tmp_path):
    result = _example().main(["--model", "smollm2-135m-instruct", "--n-train", "4", "--n-test", "2", "--batch-size",
                              "2", "--max-length", "96", "--max-prompt-length", "48", "--out", str(tmp_path / "run")])
    assert len(result["tasks"]) == 3 and all(0 <= a <= 1 for row in result["accuracy"] for a in row)
    # the adapter moved (the first of each task's steps has warmup's learning rate 0): margins are not all zero
    assert any(a > 0 for row in result["accuracy"] for a in row)
