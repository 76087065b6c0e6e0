import json
import random

import pytest

FAKE_TASKS = ["hh-rlhf-harmless-base", "hh-rlhf-helpful-base", "safe-rlhf"]


def make_release(root, tasks=FAKE_TASKS, n_train=12, n_test=6, seed=0):
    """A small synthetic release folder: chosen answers are polite and short, rejected rude and long."""
    rng = random.Random(seed)
    words = ["apple", "river", "stone", "cloud", "green", "quick", "seven", "light", "paper", "music"]
    for t, task in enumerate(tasks):
        for split, n in (("train", n_train), ("test", n_test)):
            records = []
            for i in range(n):
                topic = " ".join(rng.choice(words) for _ in range(4))
                records.append({
                    "query": f"Human: task {t} question {i} about {topic}?\n\nAssistant:",
                    "chosen": f"Assistant: Sure, {topic} is fine.",
                    "rejected": f"Assistant: No. {topic} {topic} is bad and wrong, go away.",
                })
            path = root / task / f"{split}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(records))
    return root


@pytest.fixture(scope="session")
def fake_release(tmp_path_factory):
    return make_release(tmp_path_factory.mktemp("release"))
