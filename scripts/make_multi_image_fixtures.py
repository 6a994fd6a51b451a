#!/usr/bin/env python3
"""Reference values for prompts with several images, recorded with transformers on the
committed tiny checkpoints: prompt ids, pixel values, full prompt logits and greedy
generations for 2 and 3 images (mixed sizes and modes), a left-padded batch whose rows
have 1 and 3 images, and the training loss of a batch with 1- and 2-image examples.

    python scripts/make_multi_image_fixtures.py      # after make_fixtures.py

Writes tests/fixtures/expected/multi-{pg1,pg2}-tiny.{json,safetensors}.
"""

import json
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import EXPECTED, IMAGES, MAX_NEW, versions  # noqa: E402
from make_training_fixtures import load  # noqa: E402

# (case, images in prompt order, prompt): RGB, L and RGBA inputs of different sizes.
CASES = [
    ("two", ["photo.png", "gray.png"], "caption en"),
    ("three", ["noise.png", "rgba.png", "big.png"], "answer en what is this?"),
    ("three_empty", ["gray.png", "photo.png", "noise.png"], ""),
]
# A batch mixing rows of one and three images (the one-image row is case "one").
BATCH = [
    ("one", ["photo.png"], "caption en"),
    ("three", ["noise.png", "rgba.png", "big.png"], "answer en what is this?"),
]
# Training rows: (images, prefix, suffix).
TRAIN = [
    (["photo.png", "gray.png"], "caption en", "a red circle and a blue square"),
    (["noise.png"], "answer en how many?", "2"),
]


def open_all(files):
    return [Image.open(IMAGES / f) for f in files]


def reference(name: str):
    model, processor = load(name)
    eos = 1
    tensors, cases = {}, {}
    for case, files, prompt in CASES:
        inputs = processor(text=prompt, images=[open_all(files)], return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits[0]
            gen = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False)
        n = inputs["input_ids"].shape[1]
        ids = gen[0, n:].tolist()
        tensors[f"{case}.pixel_values"] = inputs["pixel_values"].float().contiguous()
        tensors[f"{case}.logits"] = logits.float().contiguous()
        cases[case] = {"images": files, "prompt": prompt,
                       "prompt_ids": inputs["input_ids"][0].tolist(),
                       "token_type_ids": inputs["token_type_ids"][0].tolist(),
                       "generated_ids": ids}
    # Batched rows with different numbers of images, left-padded.
    batch = processor(text=[p for _, _, p in BATCH], images=[open_all(f) for _, f, _ in BATCH],
                      padding="longest", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=MAX_NEW, do_sample=False)
    rows = []
    for row in out[:, batch["input_ids"].shape[1]:].tolist():
        rows.append(row[:row.index(eos) + 1] if eos in row else row)
    singles = []
    for _, files, prompt in BATCH:
        inputs = processor(text=prompt, images=[open_all(files)], return_tensors="pt")
        with torch.no_grad():
            g = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False)
        singles.append(g[0, inputs["input_ids"].shape[1]:].tolist())
    # Training: labels on the suffix and <eos> only, the mean over supervised tokens.
    train = processor(text=[p for _, p, _ in TRAIN], images=[open_all(f) for f, _, _ in TRAIN],
                      suffix=[s for _, _, s in TRAIN], padding="longest", return_tensors="pt")
    with torch.no_grad():
        loss = float(model(**train).loss)
    meta = {
        **versions(), "max_new_tokens": MAX_NEW,
        "cases": cases,
        "batch": {"rows": [{"case": c, "images": f, "prompt": p} for c, f, p in BATCH],
                  "input_ids": batch["input_ids"].tolist(),
                  "generated_ids": rows, "single_generated_ids": singles},
        "train": {"examples": [{"images": f, "prefix": p, "suffix": s} for f, p, s in TRAIN],
                  "input_ids": train["input_ids"].tolist(), "labels": train["labels"].tolist(),
                  "loss": loss},
    }
    save_file(tensors, EXPECTED / f"multi-{name}.safetensors")
    (EXPECTED / f"multi-{name}.json").write_text(json.dumps(meta, indent=1))
    return meta


def main():
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    for name in ["pg1-tiny", "pg2-tiny"]:
        meta = reference(name)
        print(name, {c: v["generated_ids"] for c, v in meta["cases"].items()},
              meta["batch"]["generated_ids"], meta["batch"]["single_generated_ids"], meta["train"]["loss"])


if __name__ == "__main__":
    main()
