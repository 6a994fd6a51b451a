#!/usr/bin/env python3
"""Build the test fixtures: tiny random PaliGemma 1 and 2 checkpoints, test images, a
random-weight mask decoder, and what Hugging Face transformers computes on them.

    pip install -r scripts/requirements.txt
    python scripts/make_fixtures.py

Everything is seeded, so a rerun with the same library versions rewrites the same
files. Nothing here is needed at test time: `cargo test` reads the committed outputs.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import torch
import tokenizers
import transformers
from PIL import Image
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    GemmaConfig,
    Gemma2Config,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
)
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

ROOT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
IMAGES = ROOT / "images"
EXPECTED = ROOT / "expected"
MAX_NEW = 12
CASES = [
    ("caption", "photo.png", "caption en"),
    ("detect", "noise.png", "detect cat ; dog"),
    ("answer", "gray.png", "answer en what is this?"),
    ("empty", "rgba.png", ""),
]

CORPUS = """caption en
describe en
answer en what is this?
answer en how many cats are there?
question en a cat on a mat
detect cat ; dog
detect person ; car ; red double-decker bus
segment cat
ocr
a photo of a cat sitting on the table
two dogs playing in the snow near a red car
the quick brown fox jumps over the lazy dog
a person riding a bike down the street in the city
0 1 2 3 4 5 6 7 8 9 10 12 100 2024
what color is the car? the car is red.
""" * 3


def build_tokenizer() -> Tokenizer:
    """A small Gemma-style BPE: byte fallback, spaces as U+2581, no pre-tokenizer."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    byte_pieces = [f"<0x{b:02X}>" for b in range(256)]
    draft = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    draft.normalizer = normalizers.Replace(" ", "\u2581")
    # Train word pieces only (like a sentencepiece vocabulary); the final tokenizer has
    # no pre-tokenizer, as Gemma's, and cross-word pairs simply have no merge.
    draft.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\u2581", "merged_with_next"), pre_tokenizers.Split("\n", "isolated")])
    trainer = trainers.BpeTrainer(vocab_size=360, show_progress=False, special_tokens=[])
    draft.train_from_iterator(CORPUS.splitlines(keepends=True), trainer)
    trained = json.loads(draft.to_str())["model"]
    vocab = {t: i for i, t in enumerate(specials + byte_pieces)}
    for piece, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    # PaliGemma's extra tokens follow the base vocabulary: locations, segments, image.
    extra = [f"<loc{i:04d}>" for i in range(1024)] + [f"<seg{i:03d}>" for i in range(128)]
    tok.add_tokens([AddedToken(t, normalized=False) for t in extra])
    tok.add_special_tokens([AddedToken("<image>", special=True, normalized=False)])
    return tok


def make_images():
    IMAGES.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def photo(w, h):
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        r = 128 + 100 * np.sin(x / w * 3.1) * np.cos(y / h * 2.3)
        g = 60 + 150 * (y / h)
        b = 200 - 150 * (x / w)
        img = np.stack([r, g, b], -1)
        cy, cx = h * 0.45, w * 0.6
        disk = (x - cx) ** 2 + (y - cy) ** 2 < (min(w, h) * 0.25) ** 2
        img[disk] = [230, 40, 40]
        img[int(h * 0.7):int(h * 0.85), int(w * 0.1):int(w * 0.4)] = [20, 20, 200]
        img += rng.normal(0, 4, img.shape)
        return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")

    photo(96, 64).save(IMAGES / "photo.png")
    photo(300, 200).save(IMAGES / "big.png")
    Image.fromarray(rng.integers(0, 256, (70, 50, 3), dtype=np.uint8), "RGB").save(IMAGES / "noise.png")
    Image.fromarray(rng.integers(0, 256, (30, 40), dtype=np.uint8), "L").save(IMAGES / "gray.png")
    rgba = rng.integers(0, 256, (47, 33, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(IMAGES / "rgba.png")


def image_processor(size):
    proc = SiglipImageProcessorPil(
        size={"height": size, "width": size},
        resample=3,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        rescale_factor=1 / 255,
    )
    proc.image_seq_length = (size // 14) ** 2
    return proc


def processor_fixtures():
    tensors, meta = {}, {}
    for name, sizes in [("photo", [56, 224]), ("big", [224, 56]), ("noise", [56]), ("gray", [56]), ("rgba", [42])]:
        for size in sizes:
            img = Image.open(IMAGES / f"{name}.png")
            px = image_processor(size)(images=img, return_tensors="pt")["pixel_values"][0]
            key = f"{name}_{size}"
            tensors[key] = px.float().contiguous()
            meta[key] = {"image": f"{name}.png", "size": size}
    save_file(tensors, EXPECTED / "processor.safetensors")
    (EXPECTED / "processor.json").write_text(json.dumps(meta, indent=1))


def padded_vocab(tok: Tokenizer) -> int:
    n = tok.get_vocab_size(with_added_tokens=True)
    return (n + 63) // 64 * 64


def build_model(kind: str, tok: Tokenizer):
    image_id = tok.token_to_id("<image>")
    vocab = padded_vocab(tok)
    if kind == "pg1":
        image_size = 56
        text = GemmaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=1, head_dim=32, vocab_size=vocab, initializer_range=0.08,
        )
    else:
        image_size = 42
        text = Gemma2Config(
            hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, sliding_window=8,
            attn_logit_softcapping=5.0, final_logit_softcapping=10.0, vocab_size=vocab,
            initializer_range=0.08,
        )
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        patch_size=14, image_size=image_size, vision_use_head=False,
    )
    config = PaliGemmaConfig(
        vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=image_id,
        projection_dim=64, hidden_size=64, vocab_size=vocab, bos_token_id=2, eos_token_id=1, pad_token_id=0,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(1 if kind == "pg1" else 2)
    model = PaliGemmaForConditionalGeneration(config).eval()
    # Tied embeddings and small random weights make a decoder repeat its input token;
    # these scales (found by a sweep) give varied greedy outputs with top-1/top-2
    # margins far above float error.
    emb, lin = (0.25, 2.0) if kind == "pg1" else (0.1, 4.0)
    torch.manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("language_model.norm.weight"):
                p.normal_(0.0, 0.1)  # keeps logits O(5), so f32 noise stays far below 1e-4
            elif "norm" in name:
                p.normal_(0.0, 1.0)
            elif "embed_tokens" in name:
                p.normal_(0.0, emb)
            elif p.dim() == 2:
                # Unit gain in the vision tower keeps its float error small; the
                # decoder needs the larger gain to stop echoing its input.
                gain = lin if "language_model" in name else 1.0
                p.normal_(0.0, gain / p.shape[-1] ** 0.5)
    return model, image_size


def hub_layout(state):
    """transformers 5.x in-memory names -> the names of released hub checkpoints."""
    out = {}
    for k, v in state.items():
        if k == "lm_head.weight":
            continue  # tied to the embeddings; the hub files have no lm_head
        if k.startswith("model.vision_tower."):
            rest = k[len("model.vision_tower."):]
            if not rest.startswith("vision_model."):
                rest = "vision_model." + rest
            out["vision_tower." + rest] = v
        elif k.startswith("model.multi_modal_projector."):
            out[k[len("model."):]] = v
        elif k.startswith("model.language_model."):
            out["language_model.model." + k[len("model.language_model."):]] = v
        else:
            raise SystemExit(f"unexpected tensor name {k}")
    return out


HUB_TEXT_KEYS = ["hidden_size", "intermediate_size", "model_type", "num_attention_heads",
                 "num_hidden_layers", "num_key_value_heads", "vocab_size", "head_dim"]
HUB_VISION_KEYS = ["hidden_size", "intermediate_size", "model_type", "num_attention_heads",
                   "num_hidden_layers", "patch_size", "image_size"]


def save_hub_sharded(model, out: Path, image_size: int):
    """PaliGemma 1 as released: minimal 4.4x-style config, f32, two shards + index."""
    state = {k: v.detach().float().contiguous() for k, v in hub_layout(model.state_dict()).items()}
    names = sorted(state)
    half = len(names) // 2
    shards = [names[:half], names[half:]]
    weight_map = {}
    for i, part in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: state[k] for k in part}, out / fname, metadata={"format": "pt"})
        weight_map.update({k: fname for k in part})
    total = sum(v.numel() * 4 for v in state.values())
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    c = model.config
    text = {k: getattr(c.text_config, k) for k in HUB_TEXT_KEYS}
    text.update(num_image_tokens=(image_size // 14) ** 2, torch_dtype="float32")
    vision = {k: getattr(c.vision_config, k) for k in HUB_VISION_KEYS}
    vision.update(num_image_tokens=(image_size // 14) ** 2, projection_dim=64,
                  projector_hidden_act="gelu_fast", vision_use_head=False)
    config = {
        "architectures": ["PaliGemmaForConditionalGeneration"], "bos_token_id": 2, "eos_token_id": 1,
        "hidden_size": 64, "ignore_index": -100, "image_token_index": c.image_token_id,
        "model_type": "paligemma", "pad_token_id": 0, "projection_dim": 64, "text_config": text,
        "torch_dtype": "float32", "transformers_version": "4.41.0.dev0", "vision_config": vision,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))


def make_processor(tok: Tokenizer, image_size: int):
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>",
        padding_side="left",
    )
    fast.image_token = "<image>"
    fast.image_token_id = tok.token_to_id("<image>")
    return PaliGemmaProcessor(image_processor=image_processor(image_size), tokenizer=fast)


def top_k(logits, k=5):
    v, i = torch.topk(logits.float(), k)
    return [[int(a), float(b)] for a, b in zip(i, v)]


def reference(model, processor, name: str):
    tensors, cases = {}, {}
    eos = 1
    for case, image_file, prompt in CASES:
        img = Image.open(IMAGES / image_file)
        inputs = processor(text=prompt, images=img, return_tensors="pt")
        with torch.no_grad():
            px = inputs["pixel_values"].float()
            vision = model.model.vision_tower(px).last_hidden_state
            proj = model.model.multi_modal_projector(vision)
            logits = model(**inputs).logits[0]
            gen = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True)
        prompt_len = inputs["input_ids"].shape[1]
        ids = gen.sequences[0, prompt_len:].tolist()
        steps = [top_k(step[0]) for step in gen.logits]
        tensors[f"{case}.pixel_values"] = px.contiguous()
        tensors[f"{case}.vision"] = vision.contiguous()
        tensors[f"{case}.projector"] = proj.contiguous()
        tensors[f"{case}.logits"] = logits.float().contiguous()
        cases[case] = {
            "image": image_file, "prompt": prompt,
            "prompt_ids": inputs["input_ids"][0].tolist(),
            "token_type_ids": inputs["token_type_ids"][0].tolist(),
            "generated_ids": ids,
            "generated_text": processor.tokenizer.decode(ids, skip_special_tokens=True),
            "top_logits": steps,
            "min_margin": min(s[0][1] - s[1][1] for s in steps),
        }
        if len(set(ids)) < 3:
            raise SystemExit(f"{name}/{case}: degenerate generation {ids}")
    # Batched greedy generation with left padding.
    imgs = [Image.open(IMAGES / f) for _, f, _ in CASES]
    batch = processor(text=[p for _, _, p in CASES], images=imgs, return_tensors="pt", padding="longest")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=MAX_NEW, do_sample=False)
    rows = []
    for row in out[:, batch["input_ids"].shape[1]:].tolist():
        cut = row.index(eos) + 1 if eos in row else len(row)
        rows.append(row[:cut])
    save_file(tensors, EXPECTED / f"{name}.safetensors")
    meta = {
        "transformers": transformers.__version__, "torch": torch.__version__,
        "tokenizers": tokenizers.__version__, "max_new_tokens": MAX_NEW,
        "cases": cases,
        "batch": {"cases": [c for c, _, _ in CASES], "input_ids": batch["input_ids"].tolist(),
                  "attention_mask": batch["attention_mask"].tolist(), "generated_ids": rows},
    }
    (EXPECTED / f"{name}.json").write_text(json.dumps(meta, indent=1))


def make_checkpoints(tok: Tokenizer):
    for kind, name in [("pg1", "pg1-tiny"), ("pg2", "pg2-tiny")]:
        out = ROOT / name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        model, image_size = build_model(kind, tok)
        processor = make_processor(tok, image_size)
        if kind == "pg1":
            save_hub_sharded(model, out, image_size)
            processor.save_pretrained(out)
            # The hub layout must load back into transformers unchanged.
            reloaded = PaliGemmaForConditionalGeneration.from_pretrained(out, attn_implementation="eager").eval()
            theirs = reloaded.state_dict()
            for k, v in model.state_dict().items():
                assert torch.equal(v, theirs[k]), f"hub-layout checkpoint does not round-trip: {k}"
        else:
            # PaliGemma 2 ships bf16: round the weights once, save them as they are and
            # compute the reference in f32 from exactly those values.
            model = model.to(torch.bfloat16)
            model.save_pretrained(out)
            processor.save_pretrained(out)
            # Reload in f32 rather than upcasting in place: casting the live model to
            # bf16 also rounds its rotary inv_freq buffer, which a fresh load recomputes.
            model = PaliGemmaForConditionalGeneration.from_pretrained(
                out, dtype=torch.float32, attn_implementation="eager").eval()
        reference(model, processor, name)


class ResBlock(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(c, c, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(c, c, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(c, c, 1))

    def forward(self, x):
        return x + self.net(x)


def vae_fixture():
    """Random weights with the real names and shapes of vae-oid.npz's decoder, and the
    decoder's output from an independent PyTorch implementation of it."""
    torch.manual_seed(3)
    decoder = torch.nn.Sequential(
        torch.nn.Conv2d(512, 128, 1), torch.nn.ReLU(), ResBlock(128), ResBlock(128),
        torch.nn.ConvTranspose2d(128, 128, 4, 2, 1), torch.nn.ReLU(),
        torch.nn.ConvTranspose2d(128, 64, 4, 2, 1), torch.nn.ReLU(),
        torch.nn.ConvTranspose2d(64, 32, 4, 2, 1), torch.nn.ReLU(),
        torch.nn.ConvTranspose2d(32, 16, 4, 2, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 1, 1))
    # Weights on a 1/64 grid compress well in the npz and are exact in f32.
    with torch.no_grad():
        for p in decoder.parameters():
            p.copy_(torch.round(p * 1.7 * 64) / 64)
    codebook = torch.round(torch.randn(128, 512) * 64) / 64
    arrays = {"_vq_vae._embedding": codebook.numpy()}
    for k, v in decoder.state_dict().items():
        arrays[f"decoder.{k}"] = v.numpy()
    codes = torch.tensor([[0, 127, 5, 9, 64, 3, 100, 42, 17, 88, 1, 2, 126, 77, 31, 60],
                          list(range(16)), [127] * 16], dtype=torch.int64)
    with torch.no_grad():
        x = codebook[codes].reshape(3, 4, 4, 512).permute(0, 3, 1, 2)
        masks = decoder(x)[:, 0]
    out = ROOT / "vae"
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "vae-oid-random.npz", **arrays)
    # Paste two decoded masks into a 320 x 240 image as big_vision's evaluator does:
    # boxes truncated to pixels, PIL bilinear resize of the float map, threshold at 0.
    width, height = 320, 240
    boxes = [[51, 309, 708, 646], [500, 100, 530, 140]]  # y_min, x_min, y_max, x_max
    text = " ; ".join(
        "".join(f"<loc{v:04d}>" for v in box) + "".join(f"<seg{int(c):03d}>" for c in codes[i]) + f" obj{i}"
        for i, box in enumerate(boxes))
    pasted = np.zeros((len(boxes), height, width), np.uint8)
    for i, (y1, x1, y2, x2) in enumerate(boxes):
        y1, y2 = int(y1 / 1023 * height), int(y2 / 1023 * height)
        x1, x2 = int(x1 / 1023 * width), int(x2 / 1023 * width)
        small = Image.fromarray(masks[i].numpy().astype(np.float32), mode="F")
        pasted[i, y1:y2, x1:x2] = np.array(small.resize((x2 - x1, y2 - y1), Image.BILINEAR)) > 0.0
    save_file({"codes": codes, "masks": masks.contiguous(), "pasted": torch.from_numpy(pasted)},
              EXPECTED / "vae.safetensors")
    (EXPECTED / "vae.json").write_text(json.dumps({"text": text, "width": width, "height": height}, indent=1))


def main():
    torch.set_num_threads(2)
    EXPECTED.mkdir(parents=True, exist_ok=True)
    make_images()
    processor_fixtures()
    tok = build_tokenizer()
    make_checkpoints(tok)
    vae_fixture()
    print("transformers", transformers.__version__, "torch", torch.__version__)


if __name__ == "__main__":
    main()
