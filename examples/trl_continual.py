"""LifeAlign with TRL: three tasks in sequence, each one TRL DPOTrainer run with the FPO loss, the
SLMC callback and replay, on datasets.Datasets built from the release files.

    python examples/trl_continual.py                                  # SmolLM2-135M, 32 pairs a task
    python examples/trl_continual.py --model tiny-random-llama        # seconds
    accelerate launch examples/trl_continual.py ...                   # TRL's distributed options

After each task: the adapter in OUT/NN-task/adapter (PEFT format) and the implicit-reward accuracy
on the test pairs of every task of the order (a row of the accuracy matrix). The SLMC state lives
in the callback (one instance for the whole sequence); replay's buffer in the ReplayBuffer.
"""
import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from transformers import PrinterCallback  # noqa: E402
from trl import DPOConfig  # noqa: E402

from lifealign.data import short_name, task_name  # noqa: E402
from lifealign.integrations.hf_datasets import load_task_datasets  # noqa: E402
from lifealign.integrations.trl import FPOTrainer, ReplayBuffer, SLMCCallback  # noqa: E402
from lifealign.lora import add_lora  # noqa: E402
from lifealign.models import load_model  # noqa: E402

ORDER = ["hh-rlhf-harmless-base", "hh-rlhf-helpful-base", "safe-rlhf"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="tiny-random-llama, smollm2-135m-instruct, "
                   "a local directory or a Hub id")
    p.add_argument("--data-dir", default=None, help="the release folder (default: $LIFEALIGN_DATA_DIR or "
                   "../shared/data/lifealign-release)")
    p.add_argument("--tasks", default=",".join(ORDER))
    p.add_argument("--n-train", type=int, default=32)
    p.add_argument("--n-test", type=int, default=32)
    p.add_argument("--max-length", type=int, default=256, help="prompt + response tokens")
    p.add_argument("--max-prompt-length", type=int, default=128, help="prompts keep their last tokens")
    p.add_argument("--gamma", type=float, default=2.0, help="FPO's focal exponent (0: DPO)")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--out", default="runs/trl-continual")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    model, tokenizer = load_model(args.model, device="cuda" if cuda else "cpu")
    model = add_lora(model, r=8, alpha=16, targets=["q_proj", "v_proj"])  # one adapter, trained task after task

    tasks = [task_name(t) for t in args.tasks.split(",")]
    # Our tokenisation: long multi-turn prompts keep their end (the request) and every pair fits
    # max_length; without a tokenizer the rows are TRL's conversational format instead.
    data = {t: load_task_datasets(t, args.data_dir, args.n_train, args.n_test, tokenizer=tokenizer,
                                  max_length=args.max_length, max_prompt_length=args.max_prompt_length)
            for t in tasks}
    slmc = SLMCCallback(threshold=0.9, lam=0.5)
    replay = ReplayBuffer(fraction=0.2)
    out = Path(args.out)
    result = {"tasks": [], "accuracy": [], "slmc": []}
    for i, task in enumerate(tasks):
        train, _, report = data[task]
        config = DPOConfig(
            output_dir=str(out / "trainer"), num_train_epochs=args.epochs, learning_rate=args.lr,
            per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
            max_length=args.max_length, beta=args.beta, lr_scheduler_type="cosine", warmup_steps=0.1,
            seed=i, save_strategy="no", report_to="none", logging_strategy="no", disable_tqdm=True,
            use_cpu=not cuda, bf16=cuda and torch.cuda.is_bf16_supported())
        trainer = FPOTrainer(model=model, args=config, gamma=args.gamma, processing_class=tokenizer,
                             train_dataset=replay.next_training_set(train), callbacks=[slmc])
        trainer.remove_callback(PrinterCallback)
        trainer.train()  # SLMC consolidates the adapter when training ends
        model.save_pretrained(out / f"{i + 1:02d}-{task}" / "adapter")
        row = [trainer.evaluate(eval_dataset=data[t][1])["eval_rewards/accuracies"] for t in tasks]
        result["tasks"].append({"task": task, "train_rows": len(trainer.train_dataset), "data": report["notes"]})
        result["accuracy"].append(row)
        result["slmc"].append({k: v for k, v in slmc.reports[-1].items() if k != "per_matrix"})
        print(f"after {task}: reward accuracy " + "  ".join(f"{short_name(t)} {a:.2f}" for t, a in zip(tasks, row)))
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
