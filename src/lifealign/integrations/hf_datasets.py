"""The release files as `datasets.Dataset`s, for TRL and other Hugging Face trainers.

Our reader stays in front: `lifealign.data.load_task` checks every file (a `DataError` naming the
file, record and key) and filters unusable pairs, counting them in the report; only records that
passed become rows. Rows keep file order and their `index` in the file, so replay's "first 20% of
the rows" keeps its meaning.

Two row formats:
- `conversational` (TRL's preference format): prompt = [user turn], chosen / rejected = [assistant
  turn], so the tokenizer's chat template renders them as our engine does (`encode_prompt`).
- `tokenized`: prompt_ids / chosen_ids / rejected_ids from our tokenisation (`encode_records`:
  prompts keep their end, responses end with EOS), plus the frozen base model's
  ref_chosen_logps / ref_rejected_logps when the records carry them. `FPOTrainer` takes such rows
  as they are, so TRL trains on exactly the tokens our engine trains on.
"""
from __future__ import annotations

from pathlib import Path

from datasets import Dataset

from .. import data as data_mod
from ..training import clean_response, encode_records


def conversational_rows(records):
    return [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": clean_response(r["chosen"])}],
             "rejected": [{"role": "assistant", "content": clean_response(r["rejected"])}], "index": r["index"]}
            for r in records]


def tokenized_rows(records):
    """Rows of tokenised records (record["ids"]), with the reference log-probabilities of
    record["ref"] when present, which TRL's collator passes on."""
    rows = []
    for r in records:
        row = {"prompt_ids": r["ids"]["prompt"], "chosen_ids": r["ids"]["chosen"],
               "rejected_ids": r["ids"]["rejected"], "index": r["index"]}
        if "ref" in r:
            row["ref_chosen_logps"], row["ref_rejected_logps"] = float(r["ref"][0]), float(r["ref"][1])
        rows.append(row)
    return rows


def records_dataset(records, tokenized=False):
    """A `datasets.Dataset` of records in file order (see the module docstring for the formats)."""
    return Dataset.from_list(tokenized_rows(records) if tokenized else conversational_rows(records))


def load_task_datasets(name, data_dir: Path | None = None, n_train=None, n_test=None, seed=0,
                       on_invalid="filter", tokenizer=None, max_length=256, max_prompt_length=128):
    """(train Dataset, test Dataset, `load_task`'s report) of one task of the release.

    Without a tokenizer: TRL's conversational format (any DPOTrainer takes it; TRL truncates whole
    sequences to its max_length, from the end of the response by default). With one: our
    tokenisation (`tokenized` rows for `FPOTrainer`): prompts keep their last max_prompt_length
    tokens, where a multi-turn transcript holds its request, and every pair fits max_length.
    """
    task = data_mod.load_task(name, data_mod.data_dir(data_dir), n_train, n_test, seed, on_invalid)
    tokenized = tokenizer is not None
    if tokenized:
        for records in (task.train, task.test):
            encode_records(tokenizer, records, max_length, max_prompt_length)
    return records_dataset(task.train, tokenized), records_dataset(task.test, tokenized), task.report
