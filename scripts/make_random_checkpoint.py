#!/usr/bin/env python3
"""Write a full-size PaliGemma checkpoint with random weights and the real layout.

    python scripts/make_random_checkpoint.py --variant pg1-3b-224 --out /tmp/pg1-3b-224 [--dtype bf16]
    python scripts/make_random_checkpoint.py --variant pg1-3b-448 --out /tmp/pg1-3b-448
    python scripts/make_random_checkpoint.py --variant pg1-3b-896 --out /tmp/pg1-3b-896
    python scripts/make_random_checkpoint.py --variant pg2-3b-224 --out /tmp/pg2-3b-224

The directory looks like a hub download: the hub's minimal config.json, shards named
model-0000i-of-0000n.safetensors (bf16 by default) with model.safetensors.index.json
and hub key names (vision_tower.vision_model.*, multi_modal_projector.linear.*,
language_model.model.*, no lm_head), a 257216-row embedding, and hub-style tokenizer
and image-processor files (tokenizer.json, tokenizer_config.json,
special_tokens_map.json, preprocessor_config.json). The tokenizer's ids follow the real
layout: 256000 base pieces (0 <pad>, 1 <eos>, 2 <bos>, 3 <unk>, 4 <mask>,
106/107 <start_of_turn>/<end_of_turn>, "\\n" = 108, byte pieces, "\u2581caption",
"\u2581en", ... and filler), <loc0000>..<loc1023> = 256000..257023,
<seg000>..<seg127> = 257024..257151, <image> = 257152. This crate and transformers
(PaliGemmaProcessor / PaliGemmaForConditionalGeneration.from_pretrained) both load it.

Tensors are generated one at a time and written a shard at a time, so memory stays
near one shard (--shard-gb, default 2) plus one tensor in float32.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))

TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json"]

TEXT_STD = 0.04
EMBED_STD = 0.02
VISION = dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, num_hidden_layers=27, patch_size=14)
GEMMA_2B = dict(model_type="gemma", hidden_size=2048, intermediate_size=16384, num_attention_heads=8,
                num_hidden_layers=18, num_key_value_heads=1)
GEMMA2_2B = dict(model_type="gemma2", hidden_size=2304, intermediate_size=9216, num_attention_heads=8,
                 num_hidden_layers=26, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
                 sliding_window=4096, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                 hidden_activation="gelu_pytorch_tanh")
VARIANTS = {
    "pg1-3b-224": dict(image_size=224, text=GEMMA_2B, embed_std=EMBED_STD),
    "pg1-3b-448": dict(image_size=448, text=GEMMA_2B, embed_std=EMBED_STD),
    "pg1-3b-896": dict(image_size=896, text=GEMMA_2B, embed_std=EMBED_STD),
    "pg2-3b-224": dict(image_size=224, text=GEMMA2_2B, embed_std=0.01),
}
VOCAB = 257216
BASE = 256000
CORPUS = """caption en
caption es
caption de
caption fr
describe en
cap en
ocr
answer en what is in the image?
answer en how many people are there?
answer en what color is the car?
question en a cat on a mat
detect cat ; dog
detect person ; car ; bicycle ; red double-decker bus
segment cat
segment person ; dog
a photo of a cat sitting on the table
two dogs playing in the snow near a red car
the quick brown fox jumps over the lazy dog
a man and a woman riding bikes down the street in the city
a picture of a green tree next to a white house with a blue door
there are three people in this picture, one of them is holding an umbrella.
0 1 2 3 4 5 6 7 8 9 10 11 12 20 50 100 1000 2024
""" * 4


def build_tokenizer() -> Tokenizer:
    from make_fixtures import gemma_style, train_pieces

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    pieces = specials + [f"<unused{i}>" for i in range(106 - len(specials))]
    pieces += ["<start_of_turn>", "<end_of_turn>", "\n"]  # 106, 107, 108 as in Gemma
    pieces += [f"<0x{b:02X}>" for b in range(256)]
    vocab = {p: i for i, p in enumerate(pieces)}
    trained, merges = train_pieces(1500, CORPUS)
    for p in trained:
        vocab.setdefault(p, len(vocab))
    i = 0
    while len(vocab) < BASE:
        vocab.setdefault(f"<filler{i}>", len(vocab))
        i += 1
    tok = gemma_style(vocab, merges, specials + ["<start_of_turn>", "<end_of_turn>"])
    assert tok.token_to_id("<loc0000>") == 256000 and tok.token_to_id("<seg000>") == 257024
    assert tok.token_to_id("<image>") == 257152 and tok.token_to_id("\n") == 108
    for text, want in [("caption en\n", ["caption", "\u2581en", "\n"]),
                       ("detect cat ; dog\n", ["detect", "\u2581cat", "\u2581;", "\u2581dog", "\n"])]:
        got = tok.encode(text, add_special_tokens=False).tokens
        assert got == want, (text, got)
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
    yield f"{lm}.embed_tokens.weight", (VOCAB, h), "emb"
    norms = ["input_layernorm", "post_attention_layernorm"]
    if t["model_type"] == "gemma2":
        norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
    for i in range(t["num_hidden_layers"]):
        pre = f"{lm}.layers.{i}"
        yield f"{pre}.self_attn.q_proj.weight", (q, h), "tw"
        yield f"{pre}.self_attn.k_proj.weight", (kv, h), "tw"
        yield f"{pre}.self_attn.v_proj.weight", (kv, h), "tw"
        yield f"{pre}.self_attn.o_proj.weight", (h, q), "tw"
        yield f"{pre}.mlp.gate_proj.weight", (mlp, h), "tw"
        yield f"{pre}.mlp.up_proj.weight", (mlp, h), "tw"
        yield f"{pre}.mlp.down_proj.weight", (h, mlp), "tw"
        for n in norms:
            yield f"{pre}.{n}.weight", (h,), "zero"
    # Gemma 2's post-norms hold every layer's contribution to RMS 1, and with them the
    # last hidden state keeps enough of the current token's embedding that a tied
    # lm_head repeats it. A final norm scale 1 + w of random sign (w ~ N(-1, 1))
    # cancels that self-match on average.
    yield f"{lm}.norm.weight", (h,), "signed" if t["model_type"] == "gemma2" else "zero"


def random_tensor(shape, kind, dtype, text_std=TEXT_STD, embed_std=EMBED_STD):
    """std 0.02 weights, small biases, LayerNorm scales 1 and Gemma RMSNorm weights 0
    (used as 1 + w).

    A decoder with tied embeddings and small random weights echoes its last input token
    ("\\n" after the prompt) forever: the input embedding survives to the output and
    matches its own row best. Wider decoder weights (text_std) and narrower embeddings
    (embed_std) break that, so greedy generation varies from step to step; Gemma 2
    needs more (see the final norm in tensor_specs)."""
    if kind in ("w", "tw", "emb"):
        std = {"w": 0.02, "tw": text_std, "emb": embed_std}[kind]
        return (torch.randn(shape, dtype=torch.float32) * std).to(dtype)
    if kind == "b":
        return (torch.randn(shape, dtype=torch.float32) * 0.01).to(dtype)
    if kind == "one":
        return torch.ones(shape, dtype=dtype)
    if kind == "signed":
        return (torch.randn(shape, dtype=torch.float32) - 1).to(dtype)
    return torch.zeros(shape, dtype=dtype)


def hub_config(image_size, t, dtype_name):
    """The released checkpoints' minimal config.json (written by transformers 4.4x)."""
    n_img = (image_size // 14) ** 2
    text = dict(t, num_image_tokens=n_img, torch_dtype=dtype_name, vocab_size=VOCAB)
    vision = dict(VISION, model_type="siglip_vision_model", num_image_tokens=n_img,
                  projection_dim=t["hidden_size"], projector_hidden_act="gelu_fast", vision_use_head=False)
    if t["model_type"] == "gemma2":
        # PaliGemma 2 configs list num_positions and a dtype in vision_config and no
        # projector_hidden_act.
        del vision["projector_hidden_act"]
        vision.update(num_positions=n_img, torch_dtype=dtype_name)
    if image_size != 224:
        vision["image_size"] = image_size
    return {
        "architectures": ["PaliGemmaForConditionalGeneration"], "bos_token_id": 2, "eos_token_id": 1,
        "hidden_size": t["hidden_size"], "ignore_index": -100, "image_token_index": 257152,
        "model_type": "paligemma",
        "pad_token_id": 0, "projection_dim": t["hidden_size"], "text_config": text, "torch_dtype": dtype_name,
        "transformers_version": "4.47.0.dev0" if t["model_type"] == "gemma2" else "4.41.0.dev0",
        "vision_config": vision,
    }


def check(out: Path, image: Path, prompt: str, tokens: int):
    """Load the directory with transformers (no missing or unexpected keys allowed) and
    time one greedy generation on CPU in the stored dtype."""
    from PIL import Image
    from transformers import PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    t0 = time.perf_counter()
    model, info = PaliGemmaForConditionalGeneration.from_pretrained(out, dtype="auto", output_loading_info=True)
    model.eval()
    processor = PaliGemmaProcessor.from_pretrained(out, backend="pil")
    load_s = time.perf_counter() - t0
    bad = {k: v for k, v in info.items() if v}
    assert not bad, f"loading info: {bad}"
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    assert len(processor.tokenizer) == 257153, len(processor.tokenizer)
    assert processor.tokenizer.convert_tokens_to_ids(["<loc0000>", "<seg000>", "<image>", "\n"]) == [
        256000, 257024, 257152, 108]
    inputs = processor(text=prompt, images=Image.open(image), return_tensors="pt")
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    t1 = time.perf_counter()
    with torch.no_grad():
        gen = model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
    gen_s = time.perf_counter() - t1
    n = inputs["input_ids"].shape[1]
    ids = gen.sequences[0, n:].tolist()
    margins = [round(float(v[0] - v[1]), 3) for v in (torch.topk(s[0].float(), 2).values for s in gen.logits)]
    print(json.dumps({"dtype": str(model.dtype), "threads": torch.get_num_threads(), "load_s": round(load_s, 1),
                      "prompt_tokens": n, "generated_ids": ids, "text": processor.decode(ids),
                      "top1_top2_margins": margins, "generate_s": round(gen_s, 1)}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dtype", choices=["bf16", "f16", "f32"], default="bf16")
    ap.add_argument("--shard-gb", type=float, default=2.0, help="largest shard size in GB (at most 5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text-std", type=float, default=TEXT_STD, help="std of the decoder's linear weights")
    ap.add_argument("--embed-std", type=float, help="std of the embeddings (default per variant)")
    ap.add_argument("--check", type=Path, metavar="IMAGE",
                    help="then load the result with transformers and time a greedy generation on IMAGE")
    ap.add_argument("--check-only", action="store_true", help="skip writing; only run --check on --out")
    ap.add_argument("--prompt", default="caption en")
    ap.add_argument("--tokens", type=int, default=4)
    ap.add_argument("--tokenizer-from", type=Path, metavar="DIR",
                    help="copy the tokenizer and processor files from a checkpoint this script made "
                         "(for machines without this script's training dependencies)")
    args = ap.parse_args()
    if args.check_only:
        if not args.check:
            ap.error("--check-only needs --check IMAGE")
        return check(args.out, args.check, args.prompt, args.tokens)
    if not 0 < args.shard_gb <= 5:
        ap.error("--shard-gb must be in (0, 5]")
    spec = VARIANTS[args.variant]
    if args.embed_std is None:
        args.embed_std = spec["embed_std"]
    dtype, dtype_name = {"bf16": (torch.bfloat16, "bfloat16"), "f16": (torch.float16, "float16"),
                         "f32": (torch.float32, "float32")}[args.dtype]
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    current, size, limit = {}, 0, args.shard_gb * 1e9
    total, parts = 0, []

    def flush():
        tmp = args.out / f"shard-{len(parts)}.tmp"
        save_file(current, tmp, metadata={"format": "pt"})
        parts.append((tmp, list(current)))

    for name, shape, kind in tensor_specs(spec["image_size"], spec["text"]):
        t = random_tensor(shape, kind, dtype, args.text_std, args.embed_std)
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > limit:
            flush()
            current, size = {}, 0
        current[name] = t
        size += nbytes
        total += nbytes
    flush()
    n = len(parts)
    weight_map = {}
    for i, (tmp, names) in enumerate(parts, 1):
        fname = f"model-{i:05d}-of-{n:05d}.safetensors"
        tmp.rename(args.out / fname)
        weight_map.update({k: fname for k in names})
    (args.out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    config = hub_config(spec["image_size"], spec["text"], dtype_name)
    (args.out / "config.json").write_text(json.dumps(config, indent=2))
    if args.tokenizer_from:
        import shutil
        for name in TOKENIZER_FILES:
            shutil.copy(args.tokenizer_from / name, args.out / name)
        # The image processor's size and sequence length follow this variant.
        pre = json.loads((args.out / "preprocessor_config.json").read_text())
        side = spec["image_size"]
        pre.update(size={"height": side, "width": side}, image_seq_length=(side // 14) ** 2)
        (args.out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    else:
        from make_fixtures import write_hub_processor_files
        write_hub_processor_files(build_tokenizer(), args.out, spec["image_size"], has_mask_token=True)
    print(f"wrote {args.out}: {n} shards, {total / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s")
    if args.check:
        check(args.out, args.check, args.prompt, args.tokens)


if __name__ == "__main__":
    main()
