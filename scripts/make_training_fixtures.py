#!/usr/bin/env python3
"""Reference values for fine-tuning, recorded with transformers (and torch's optimisers)
on the committed tiny checkpoints: the processor's training inputs for a padded batch
with suffixes, the loss, every parameter's gradient, and the losses of a few optimiser
steps for full and attention-only training.

    python scripts/make_training_fixtures.py      # after make_fixtures.py

Writes tests/fixtures/expected/train-{pg1,pg2}-tiny.{json,safetensors}. Gradients are
keyed by the checkpoint's (hub-layout) tensor names.
"""

import json
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import PaliGemmaForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import EXPECTED, IMAGES, ROOT, load_processor, versions  # noqa: E402

# (image, prefix, suffix): a caption, a detection target (location tokens are single
# vocabulary entries), a short answer; suffix lengths differ so the batch is padded.
EXAMPLES = [
    ("photo.png", "caption en", "a red circle and a blue square"),
    ("noise.png", "detect cat", "<loc0100><loc0200><loc0300><loc0400> cat"),
    ("gray.png", "answer en how many shapes are there?", "2"),
]

# Optimiser runs: each starts from the checkpoint, takes STEPS steps on the whole batch,
# and records the batch loss before every update.
STEPS = 3
RUNS = [
    {"name": "sgd_full", "method": "full", "optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0},
    {"name": "sgd_attention", "method": "attention", "optimizer": "sgd", "lr": 0.1, "momentum": 0.0,
     "weight_decay": 0.0},
    {"name": "adamw_full", "method": "full", "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01},
    {"name": "adamw_attention", "method": "attention", "optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.01},
    # transformers' cosine schedule with warmup (step 0 at rate 0), torch's global
    # gradient-norm clipping, and two micro-batches accumulated into each step.
    {"name": "adamw_full_clip_cosine_accum", "method": "full", "optimizer": "adamw", "lr": 3e-3,
     "weight_decay": 0.01, "clip_norm": 0.5, "schedule": "cosine", "warmup": 1, "micro_batches": [[0, 1], [2]]},
]


def canonical(name: str) -> str:
    """transformers 5.x parameter names -> the checkpoint names this crate loads."""
    for old, new in [("model.vision_tower.vision_model.", "vision_tower.vision_model."),
                     ("model.vision_tower.", "vision_tower.vision_model."),
                     ("model.multi_modal_projector.", "multi_modal_projector."),
                     ("model.language_model.", "language_model.model.")]:
        if name.startswith(old):
            return new + name[len(old):]
    raise ValueError(name)


def is_attention(name: str) -> bool:
    """The decoder's q/k/v/o projections: what big_vision's colab fine-tunes."""
    return name.startswith("model.language_model.") and any(
        f"self_attn.{p}_proj." in name for p in "qkvo")


def load(name: str):
    path = ROOT / name
    model = PaliGemmaForConditionalGeneration.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager")
    model.eval()  # dropout is 0 anyway; eval keeps it explicit
    size = model.config.vision_config.image_size
    return model, load_processor(path, size)


def batch(processor, examples=EXAMPLES):
    return processor(text=[p for _, p, _ in examples], images=[Image.open(IMAGES / f) for f, _, _ in examples],
                     suffix=[s for _, _, s in examples], padding="longest", return_tensors="pt")


def per_example_losses(logits, labels):
    out = []
    for row_logits, row_labels in zip(logits, labels):
        shift = torch.nn.functional.pad(row_labels, (0, 1), value=-100)[1:]
        out.append(float(torch.nn.functional.cross_entropy(row_logits.float(), shift, ignore_index=-100)))
    return out


def run_optimizer(name: str, run: dict, inputs, dtype=torch.float32) -> list:
    from transformers import get_cosine_schedule_with_warmup
    model, processor = load(name)
    model = model.to(dtype)
    cast = lambda b: {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in b.items()}
    inputs = cast(inputs)
    # Micro-batches are processed on their own (their own padding), each loss weighted
    # by its share of the supervised tokens.
    micro = [cast(batch(processor, [EXAMPLES[i] for i in group])) for group in run.get("micro_batches", [])]
    shares = [int((m["labels"][:, 1:] != -100).sum()) for m in micro]
    shares = [n / sum(shares) for n in shares]
    params = []
    for n, p in model.named_parameters():
        train = run["method"] == "full" or is_attention(n)
        p.requires_grad_(train)
        if train:
            params.append(p)
    if run["optimizer"] == "sgd":
        opt = torch.optim.SGD(params, lr=run["lr"], momentum=run["momentum"], weight_decay=run["weight_decay"])
    else:
        opt = torch.optim.AdamW(params, lr=run["lr"], weight_decay=run["weight_decay"])
    sched = None
    if run.get("schedule") == "cosine":
        sched = get_cosine_schedule_with_warmup(opt, run["warmup"], STEPS)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        if micro:
            total = 0.0
            for m, share in zip(micro, shares):
                loss = model(**m).loss * share
                total += float(loss.detach())
                loss.backward()
            losses.append(total)
        else:
            loss = model(**inputs).loss
            losses.append(float(loss.detach()))
            loss.backward()
        if "clip_norm" in run:
            torch.nn.utils.clip_grad_norm_(params, run["clip_norm"])
        opt.step()
        if sched is not None:
            sched.step()
    with torch.no_grad():
        if micro:
            losses.append(sum(float(model(**m).loss) * share for m, share in zip(micro, shares)))
        else:
            losses.append(float(model(**inputs).loss))
    return losses


LORA = {"r": 4, "lora_alpha": 8, "seed": 3, "b_std": 0.2, "lr": 2e-3, "steps": 2,
        "target_modules": r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"}


def lora_fixture(name: str, inputs) -> dict:
    """A PEFT LoRA model (adapters on the decoder's projections, B made non-zero so it
    changes the output) saved as an adapter directory, with its loss, the gradients of
    every adapter weight and the losses of a few AdamW steps on the adapters."""
    from peft import LoraConfig, get_peft_model
    model, _ = load(name)
    config = LoraConfig(r=LORA["r"], lora_alpha=LORA["lora_alpha"], lora_dropout=0.0,
                        target_modules=LORA["target_modules"], bias="none")
    torch.manual_seed(LORA["seed"])
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, LORA["b_std"])
    out_dir = ROOT / f"lora-{name}"
    peft_model.save_pretrained(out_dir)
    # Machine-independent files: the base model by its fixture name, no model card.
    (out_dir / "README.md").unlink(missing_ok=True)
    config_path = out_dir / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text())
    adapter_config["base_model_name_or_path"] = f"../{name}"
    config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True))
    loss = peft_model(**inputs).loss
    loss.backward()
    # Keyed as in the adapter file (PEFT drops the adapter name ".default" when saving).
    grads = {n.replace(".default", ""): p.grad.detach().float().contiguous()
             for n, p in peft_model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=LORA["lr"])
    losses = []
    for _ in range(LORA["steps"]):
        opt.zero_grad()
        step_loss = peft_model(**inputs).loss
        losses.append(float(step_loss.detach()))
        step_loss.backward()
        opt.step()
    with torch.no_grad():
        losses.append(float(peft_model(**inputs).loss))
    return {"loss": float(loss.detach()), "grads": grads, "adamw_losses": losses,
            "adapter_dir": out_dir.name, **{k: v for k, v in LORA.items()}}


def fixture(name: str):
    model, processor = load(name)
    inputs = batch(processor)
    out = model(**inputs)
    out.loss.backward()
    tensors = {
        "input_ids": inputs["input_ids"].contiguous(),
        "token_type_ids": inputs["token_type_ids"].contiguous(),
        "attention_mask": inputs["attention_mask"].contiguous(),
        "labels": inputs["labels"].contiguous(),
        "pixel_values": inputs["pixel_values"].float().contiguous(),
    }
    grads = {}
    for n, p in model.named_parameters():
        if n == "lm_head.weight":
            continue  # tied: its gradient is already summed into the embedding's
        assert p.grad is not None, n
        grads[canonical(n)] = p.grad.detach().float().contiguous()
    for k, g in grads.items():
        tensors[f"grad.{k}"] = g
    meta = {
        **versions(),
        "examples": [{"image": f, "prefix": p, "suffix": s} for f, p, s in EXAMPLES],
        "loss": float(out.loss.detach()),
        "per_example_losses": per_example_losses(out.logits.detach(), inputs["labels"]),
        "supervised_tokens": int((inputs["labels"][:, 1:] != -100).sum()),
        "runs": [{**run, "losses": run_optimizer(name, run, inputs),
                  "float64_losses": run_optimizer(name, run, inputs, torch.float64)} for run in RUNS],
        "note": "loss: transformers' (float32 logits, shifted, cross-entropy mean over every supervised token "
                "of the batch). runs[].losses: the batch loss before each optimiser step, then after the last; "
                "float64_losses: the same run in float64, whose distance to the float32 run is torch's own "
                "float error on it.",
    }
    lora = lora_fixture(name, inputs)
    for k, g in lora.pop("grads").items():
        tensors[f"lora_grad.{k}"] = g
    meta["lora"] = lora
    save_file(tensors, EXPECTED / f"train-{name}.safetensors")
    (EXPECTED / f"train-{name}.json").write_text(json.dumps(meta, indent=1))
    return meta


def main():
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    for name in ["pg1-tiny", "pg2-tiny"]:
        meta = fixture(name)
        print(name, "loss", round(meta["loss"], 5), {r["name"]: [round(v, 4) for v in r["losses"]] for r in meta["runs"]})


if __name__ == "__main__":
    main()
