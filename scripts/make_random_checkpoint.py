#!/usr/bin/env python3
"""Write a full-size PaliGemma checkpoint with random weights and the real layout.

    python scripts/make_random_checkpoint.py --variant pg1-3b-224 --out /tmp/pg1-3b-224

The directory looks like a hub download: the hub's minimal config.json, bf16 shards
named model-0000i-of-0000n.safetensors with model.safetensors.index.json and hub key
names (vision_tower.vision_model.*, multi_modal_projector.linear.*,
language_model.model.*, no lm_head), a 257216-row embedding, and a tokenizer whose ids
follow the real layout: 256000 base pieces ("\\n" = 108), <loc0000>..<loc1023> =
256000..257023, <seg000>..<seg127> = 257024..257151, <image> = 257152. Both this crate
and transformers load it. Tensors are generated one at a time, so memory stays near
one shard.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import make_processor  # noqa: E402

VISION = dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, num_hidden_layers=27, patch_size=14)
VARIANTS = {
    "pg1-3b-224": dict(image_size=224, text=dict(model_type="gemma", hidden_size=2048, intermediate_size=16384,
                                                 num_attention_heads=8, num_hidden_layers=18, num_key_value_heads=1)),
    "pg1-3b-448": dict(image_size=448, text=dict(model_type="gemma", hidden_size=2048, intermediate_size=16384,
                                                 num_attention_heads=8, num_hidden_layers=18, num_key_value_heads=1)),
    "pg2-3b-224": dict(image_size=224, text=dict(model_type="gemma2", hidden_size=2304, intermediate_size=9216,
                                                 num_attention_heads=8, num_hidden_layers=26, num_key_value_heads=4,
                                                 head_dim=256, query_pre_attn_scalar=256, sliding_window=4096,
                                                 attn_logit_softcapping=50.0, final_logit_softcapping=30.0)),
}
VOCAB = 257216
BASE = 256000
WORDS = ["caption", "describe", "answer", "question", "detect", "segment", "ocr", "cap", "en", "de", "fr",
         "es", "what", "is", "this", "the", "a", "of", "in", "on", "cat", "dog", "car", "person", "photo",
         "image", "there", "how", "many", "color", "red", "blue", "green", "white", "black", "and", "with"]


def build_tokenizer() -> Tokenizer:
    pieces = ["<pad>", "<eos>", "<bos>", "<unk>"]
    pieces += [f"<unused{i}>" for i in range(len(pieces), 108)]
    pieces.append("\n")  # id 108, as in Gemma
    pieces += [f"<0x{b:02X}>" for b in range(256)]
    merges = []
    vocab = {p: i for i, p in enumerate(pieces)}

    def add(p):
        if p not in vocab:
            vocab[p] = len(vocab)

    for c in "\u2581" + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:?!'\"-()":
        add(c)
    for w in WORDS:
        word = "\u2581" + w
        cur = word[0]
        for ch in word[1:]:
            merges.append((cur, ch))
            cur += ch
            add(cur)
    i = 0
    while len(vocab) < BASE:
        add(f"<filler{i}>")
        i += 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ["<pad>", "<eos>", "<bos>", "<unk>"]])
    extra = [f"<loc{i:04d}>" for i in range(1024)] + [f"<seg{i:03d}>" for i in range(128)]
    tok.add_tokens([AddedToken(t, normalized=False) for t in extra])
    tok.add_special_tokens([AddedToken("<image>", special=True, normalized=False)])
    assert tok.token_to_id("<loc0000>") == 256000 and tok.token_to_id("<image>") == 257152
    assert tok.token_to_id("\n") == 108
    return tok


def tensor_specs(image_size, t):
    """(name, shape, kind) for every tensor, in hub naming."""
    v, h = VISION["hidden_size"], t["hidden_size"]
    head_dim = t.get("head_dim", 256)
    q, kv, mlp = t["num_attention_heads"] * head_dim, t["num_key_value_heads"] * head_dim, t["intermediate_size"]
    p = VISION["patch_size"]
    vt = "vision_tower.vision_model"
    yield f"{vt}.embeddings.patch_embedding.weight", (v, 3, p, p), "w"
    yield f"{vt}.embeddings.patch_embedding.bias", (v,), "b"
    yield f"{vt}.embeddings.position_embedding.weight", ((image_size // p) ** 2, v), "w"
    for i in range(VISION["num_hidden_layers"]):
        pre = f"{vt}.encoder.layers.{i}"
        for name in ["q_proj", "k_proj", "v_proj", "out_proj"]:
            yield f"{pre}.self_attn.{name}.weight", (v, v), "w"
            yield f"{pre}.self_attn.{name}.bias", (v,), "b"
        for ln in ["layer_norm1", "layer_norm2"]:
            yield f"{pre}.{ln}.weight", (v,), "one"
            yield f"{pre}.{ln}.bias", (v,), "b"
        yield f"{pre}.mlp.fc1.weight", (VISION["intermediate_size"], v), "w"
        yield f"{pre}.mlp.fc1.bias", (VISION["intermediate_size"],), "b"
        yield f"{pre}.mlp.fc2.weight", (v, VISION["intermediate_size"]), "w"
        yield f"{pre}.mlp.fc2.bias", (v,), "b"
    yield f"{vt}.post_layernorm.weight", (v,), "one"
    yield f"{vt}.post_layernorm.bias", (v,), "b"
    yield "multi_modal_projector.linear.weight", (h, v), "w"
    yield "multi_modal_projector.linear.bias", (h,), "b"
    lm = "language_model.model"
    yield f"{lm}.embed_tokens.weight", (VOCAB, h), "w"
    norms = ["input_layernorm", "post_attention_layernorm"]
    if t["model_type"] == "gemma2":
        norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
    for i in range(t["num_hidden_layers"]):
        pre = f"{lm}.layers.{i}"
        yield f"{pre}.self_attn.q_proj.weight", (q, h), "w"
        yield f"{pre}.self_attn.k_proj.weight", (kv, h), "w"
        yield f"{pre}.self_attn.v_proj.weight", (kv, h), "w"
        yield f"{pre}.self_attn.o_proj.weight", (h, q), "w"
        yield f"{pre}.mlp.gate_proj.weight", (mlp, h), "w"
        yield f"{pre}.mlp.up_proj.weight", (mlp, h), "w"
        yield f"{pre}.mlp.down_proj.weight", (h, mlp), "w"
        for n in norms:
            yield f"{pre}.{n}.weight", (h,), "zero"
    yield f"{lm}.norm.weight", (h,), "zero"


def random_tensor(shape, kind, dtype):
    if kind == "w":
        return (torch.randn(shape, dtype=torch.float32) * 0.02).to(dtype)
    if kind == "b":
        return (torch.randn(shape, dtype=torch.float32) * 0.01).to(dtype)
    if kind == "one":
        return torch.ones(shape, dtype=dtype)
    return torch.zeros(shape, dtype=dtype)  # Gemma norms store w in (1 + w)


def hub_config(variant, image_size, t):
    n_img = (image_size // 14) ** 2
    text = dict(t, num_image_tokens=n_img, torch_dtype="bfloat16", vocab_size=VOCAB)
    vision = dict(VISION, model_type="siglip_vision_model", num_image_tokens=n_img,
                  projection_dim=t["hidden_size"], projector_hidden_act="gelu_fast", vision_use_head=False)
    if image_size != 224:
        vision["image_size"] = image_size
    return {
        "architectures": ["PaliGemmaForConditionalGeneration"], "bos_token_id": 2, "eos_token_id": 1,
        "hidden_size": t["hidden_size"], "ignore_index": -100, "image_token_index": 257152,
        "model_type": "paligemma",
        "pad_token_id": 0, "projection_dim": t["hidden_size"], "text_config": text, "torch_dtype": "bfloat16",
        "transformers_version": "4.44.0.dev0", "vision_config": vision,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    ap.add_argument("--shard-gb", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    spec = VARIANTS[args.variant]
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    shards, current, size, limit = [], {}, 0, args.shard_gb * 1e9
    weight_map, total = {}, 0
    tmp_names = []
    for name, shape, kind in tensor_specs(spec["image_size"], spec["text"]):
        t = random_tensor(shape, kind, dtype)
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > limit:
            tmp = args.out / f"shard-{len(tmp_names)}.tmp"
            save_file(current, tmp, metadata={"format": "pt"})
            tmp_names.append((tmp, list(current)))
            current, size = {}, 0
        current[name] = t
        size += nbytes
        total += nbytes
    tmp = args.out / f"shard-{len(tmp_names)}.tmp"
    save_file(current, tmp, metadata={"format": "pt"})
    tmp_names.append((tmp, list(current)))
    n = len(tmp_names)
    for i, (tmp, names) in enumerate(tmp_names, 1):
        fname = f"model-{i:05d}-of-{n:05d}.safetensors"
        tmp.rename(args.out / fname)
        shards.append(fname)
        weight_map.update({k: fname for k in names})
    (args.out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (args.out / "config.json").write_text(json.dumps(hub_config(args.variant, spec["image_size"], spec["text"]), indent=2))
    make_processor(build_tokenizer(), spec["image_size"]).save_pretrained(args.out)
    print(f"wrote {args.out}: {n} shards, {total / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
