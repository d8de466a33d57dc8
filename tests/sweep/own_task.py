"""A user's own labelled task, written the way a user would (not by hybridft's generator): recipe
lines -> dietary label, in the ``task`` format, with its own labels, short texts (~10 words
against the demo IT tickets' ~30) and a kitchen vocabulary the demo data never uses."""

from __future__ import annotations

import json
import random
import re
from itertools import combinations
from pathlib import Path
from typing import Any

from sweep_helpers import hybrid_job

SOURCE = "recipe_diet"
LABELS = ["omnivore", "vegetarian", "vegan", "pescatarian"]
SHARES = [0.4, 0.25, 0.2, 0.15]  # imbalanced on purpose: the majority class is unambiguous
SPLITS = {"train": 300, "validation": 40, "test": 40}

# the label follows from the protein; the other slots are plant-based and only add variety
PROTEIN = {
    "omnivore": ["chorizo", "lamb shank", "chicken thighs", "pork belly", "duck breast",
                 "beef brisket", "smoked bacon", "venison"],
    "vegetarian": ["halloumi", "feta", "paneer", "ricotta", "soft eggs", "gruyere",
                   "mozzarella", "goat cheese"],
    "vegan": ["tofu", "tempeh", "chickpeas", "lentils", "seitan", "black beans", "cashews",
              "edamame"],
    "pescatarian": ["salmon", "cod", "prawns", "mussels", "sardines", "mackerel", "trout",
                    "squid"],
}  # fmt: skip
METHOD = ["roasted", "braised", "grilled", "steamed", "pan-fried", "slow-cooked", "baked",
          "poached", "charred", "stewed"]  # fmt: skip
VEG = ["leeks", "fennel", "squash", "okra", "parsnips", "kale", "aubergine", "beetroot",
       "turnips", "chard", "celeriac", "asparagus", "radishes", "cabbage", "shallots",
       "mushrooms"]  # fmt: skip
FINISH = ["lemon zest", "miso glaze", "toasted seeds", "parsley", "chilli oil", "capers",
          "pickled onion", "dill", "sumac", "harissa"]  # fmt: skip
TEMPLATES = [
    "Dish: {method} {veg} with {protein}, {finish}.\nDiet?",
    "Menu: {protein} and {method} {veg}; {finish}.\nDiet?",
    "Plate of {method} {veg}, {protein}, finished with {finish}.\nDiet?",
]


def write_own_task(out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write train / validation / test JSONL rows ``{"prompt", "completion", "label"}``.

    Any two rows differ in at least two of their four slots (no shared slot triple), so no
    validation or test row is a near-duplicate of a train row under the leakage shield's rules.
    """
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    used: set[tuple[str, ...]] = set()
    while len(rows) < sum(SPLITS.values()):
        label = rng.choices(LABELS, SHARES)[0]
        slots = {"method": rng.choice(METHOD), "veg": rng.choice(VEG),
                 "protein": rng.choice(PROTEIN[label]), "finish": rng.choice(FINISH)}  # fmt: skip
        triples = {tuple(t) for t in combinations(slots.items(), 3)}
        if triples & used:
            continue
        used |= triples
        prompt = rng.choice(TEMPLATES).format(**slots)
        rows.append({"prompt": prompt, "completion": label, "label": label})
    out_dir.mkdir(parents=True, exist_ok=True)
    files, start = {}, 0
    for split, n in SPLITS.items():
        files[split] = out_dir / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in rows[start : start + n]))
        start += n
    return files


def own_task_job(tmp: Path, data: Path, files: dict[str, Path]) -> dict[str, Any]:
    """The sweep test's hybrid job with the user's task as its target, beside the demo's
    instruction suite: the source, the SFT mix, eval, validation and calibration renamed."""
    spec = hybrid_job(tmp, data)
    sources = spec["data"]["sources"]
    spec["data"]["sources"] = {
        SOURCE: {"paths": [str(files["train"])], "format": "task", "kind": "task",
                 "labels": list(LABELS)},
        "instr": sources["instr"],
    }  # fmt: skip
    for stage in spec["stages"]:
        for item in stage["mix"]:
            if item["source"] == "it_desk":
                item["source"] = SOURCE
    spec["data"]["eval"] = {SOURCE: [str(files["test"])]}
    spec["data"]["validation"] = {SOURCE: [str(files["validation"])]}
    spec["eval"]["calibration"] = {SOURCE: [str(files["validation"])]}
    return spec


def labels_of(path: Path) -> list[str]:
    return [json.loads(line)["label"] for line in path.read_text().splitlines()]


def prompt_words(path: Path) -> list[list[str]]:
    """Each row's prompt as lower-case words."""
    return [
        re.findall(r"[a-z]+", json.loads(line)["prompt"].lower())
        for line in path.read_text().splitlines()
    ]
