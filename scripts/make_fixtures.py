#!/usr/bin/env python3
"""Build the test fixtures: tiny random PaliGemma 1 and 2 checkpoints, test images, a
random-weight mask decoder, and what Hugging Face transformers computes on them.

    pip install -r scripts/requirements.txt
    python scripts/make_fixtures.py

Everything is seeded, so a rerun with the same library versions rewrites the same
files. Nothing here is needed at test time: `cargo test` reads the committed outputs.
See tests/fixtures/README.md for what each file holds.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import PIL
import safetensors
import tokenizers
import torch
import transformers
from PIL import Image
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    GemmaConfig,
    Gemma2Config,
    GemmaTokenizer,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
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
# Seeds for the random weights of each tiny model. The PaliGemma 2 seed was picked by
# a sweep for varied greedy outputs and wide top-1/top-2 margins (see `build_model`).
WEIGHT_SEEDS = {"pg1": 5, "pg2": 108}

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

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]


def versions():
    return {
        "transformers": transformers.__version__, "torch": torch.__version__,
        "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__,
        "pillow": PIL.__version__, "numpy": np.__version__,
    }


def train_pieces(vocab_size: int, corpus: str = CORPUS):
    """BPE pieces and merges trained on `corpus`, one word at a time (a word starts at
    a U+2581 space or is a lone "\\n"), like a sentencepiece vocabulary. A tokenizer
    with these merges and no pre-tokenizer, as Gemma's, splits text the same way, since
    no merge spans two words."""
    draft = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    draft.normalizer = normalizers.Replace(" ", "\u2581")
    draft.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\u2581", "merged_with_next"), pre_tokenizers.Split("\n", "isolated")])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=[])
    draft.train_from_iterator(corpus.splitlines(keepends=True), trainer)
    trained = json.loads(draft.to_str())["model"]
    pieces = [p for p, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1])]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    return pieces, merges


def gemma_style(vocab: dict, merges: list, specials: list) -> Tokenizer:
    """Gemma's tokenizer.json pipeline around a BPE vocabulary, plus PaliGemma's
    <loc>, <seg> and <image> tokens appended after the base vocabulary."""
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    extra = [f"<loc{i:04d}>" for i in range(1024)] + [f"<seg{i:03d}>" for i in range(128)]
    tok.add_tokens([AddedToken(t, normalized=False) for t in extra])
    tok.add_special_tokens([AddedToken("<image>", special=True, normalized=False)])
    return tok


def build_tokenizer() -> Tokenizer:
    """A small Gemma-style BPE: byte fallback, spaces as U+2581, no pre-tokenizer.

    Ids: 0 <pad>, 1 <eos>, 2 <bos>, 3 <unk>, 4..259 the byte pieces <0x00>..<0xFF>,
    then the trained pieces, then <loc0000>..<loc1023>, <seg000>..<seg127>, <image>."""
    pieces, merges = train_pieces(360)
    vocab = {t: i for i, t in enumerate(SPECIALS + [f"<0x{b:02X}>" for b in range(256)])}
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    return gemma_style(vocab, merges, SPECIALS)


def check_tokenizer(tok: Tokenizer):
    assert [tok.token_to_id(t) for t in SPECIALS] == [0, 1, 2, 3]
    assert tok.token_to_id("<0x00>") == 4 and tok.token_to_id("<0xFF>") == 259
    base = tok.token_to_id("<loc0000>")
    assert tok.token_to_id("<seg000>") == base + 1024 and tok.token_to_id("<image>") == base + 1152
    assert tok.encode("\n", add_special_tokens=False).ids == [tok.token_to_id("\n")]
    for text in ["caption en", "detect cat ; dog", "answer en what is this?", "2024"]:
        n = len(tok.encode(text, add_special_tokens=False).ids)
        assert n <= 6, f"{text!r} takes {n} pieces"


def with_bos_template(tok: Tokenizer) -> Tokenizer:
    """The released Gemma tokenizer.json prepends <bos> in its post-processor."""
    tok = Tokenizer.from_str(tok.to_str())
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", 2)])
    return tok


def gemma_tokenizer(tok: Tokenizer) -> GemmaTokenizer:
    # mask_token=None: this small vocabulary has no <mask> (the real one has it at 4).
    return GemmaTokenizer(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>",
        mask_token=None, add_bos_token=True, add_eos_token=False, padding_side="left",
    )


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
    """transformers 5.x's PIL backend of the SigLIP image processor (what
    `backend="pil"` selects): PIL bicubic resize on uint8, rescale, normalise."""
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
    sizes = [("photo", [56, 224]), ("big", [224, 56]), ("noise", [56]), ("gray", [56]), ("rgba", [42, 56])]
    for name, sizes in sizes:
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


def build_model(kind: str, tok: Tokenizer, weight_seed: int):
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
    torch.manual_seed(weight_seed)
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


def write_hub_processor_files(tok: Tokenizer, out: Path, image_size: int, has_mask_token: bool = False):
    """Tokenizer and image-processor files as the released (transformers 4.4x) hub
    checkpoints have them: tokenizer.json with a <bos> post-processor,
    tokenizer_config.json naming GemmaTokenizer, special_tokens_map.json and a flat
    preprocessor_config.json. transformers 5.x loads these as they are."""
    with_bos_template(tok).save(str(out / "tokenizer.json"))
    tokenizer_config = {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<bos>",
        "clean_up_tokenization_spaces": False, "eos_token": "<eos>",
        "model_max_length": 1000000000000000019884624838656, "pad_token": "<pad>",
        "processor_class": "PaliGemmaProcessor", "spaces_between_special_tokens": False,
        "tokenizer_class": "GemmaTokenizer", "unk_token": "<unk>", "use_default_system_prompt": False,
    }
    if not has_mask_token:
        # GemmaTokenizer would otherwise add a "<mask>" token after <image>.
        tokenizer_config["mask_token"] = None
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    special = {"additional_special_tokens": ["<image>"], "bos_token": "<bos>", "eos_token": "<eos>",
               "pad_token": "<pad>", "unk_token": "<unk>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    preprocessor = {
        # The released files say null here (no RGB conversion, so grayscale and RGBA
        # inputs fail in transformers); the expected outputs are defined with conversion.
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "SiglipImageProcessor",
        "image_seq_length": (image_size // 14) ** 2, "image_std": [0.5, 0.5, 0.5],
        "processor_class": "PaliGemmaProcessor", "resample": 3, "rescale_factor": 1 / 255,
        "size": {"height": image_size, "width": image_size},
    }
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))


def make_processor(tok: Tokenizer, image_size: int):
    return PaliGemmaProcessor(image_processor=image_processor(image_size), tokenizer=gemma_tokenizer(tok))


def load_processor(path: Path, image_size: int) -> PaliGemmaProcessor:
    """Load a fixture's processor the way a user would, forcing the PIL image backend
    (without it, transformers 5.x picks torchvision whenever that is installed)."""
    proc = PaliGemmaProcessor.from_pretrained(path, backend="pil")
    ip = proc.image_processor
    assert isinstance(ip, SiglipImageProcessorPil), type(ip)
    assert ip.resample == 3 and ip.size["height"] == ip.size["width"] == image_size, (ip.resample, ip.size)
    assert proc.image_seq_length == (image_size // 14) ** 2
    return proc


def top_k(logits, k=5):
    v, i = torch.topk(logits.float(), k)
    return [[int(a), float(b)] for a, b in zip(i, v)]


def capture_lm_kwargs(model):
    """Record the position_ids the language model gets on each forward call."""
    calls = []

    def hook(_module, _args, kwargs):
        calls.append(kwargs["position_ids"].tolist())

    return calls, model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)


def expected_visibility(token_type, layer_kind, window):
    """The prefix-LM rule transformers 5.x applies: causal (and, for sliding layers,
    kv > q - window) OR both tokens in the token_type 0 block."""
    n = len(token_type)
    q = torch.arange(n)[:, None]
    k = torch.arange(n)[None, :]
    causal = k <= q
    if layer_kind == "sliding_attention":
        causal &= k > q - window
    tt = torch.tensor(token_type)
    prefix = (tt[:, None] == 0) & (tt[None, :] == 0)
    return causal | prefix


def check_uncached(model, inputs, ids, step_logits):
    """Re-run prompt + generated tokens in one uncached forward pass (generated tokens
    with token_type 1) and check it against generate()'s per-step logits; return the
    attention visibility per layer type, read off the eager attention probabilities."""
    n_prompt = inputs["input_ids"].shape[1]
    feed = ids[:-1]
    full_ids = torch.cat([inputs["input_ids"], torch.tensor([feed], dtype=torch.long)], 1)
    token_type = inputs["token_type_ids"][0].tolist() + [1] * len(feed)
    with torch.no_grad():
        out = model(input_ids=full_ids, pixel_values=inputs["pixel_values"],
                    attention_mask=torch.ones_like(full_ids), token_type_ids=torch.tensor([token_type]),
                    use_cache=False, output_attentions=True)
    ours = out.logits[0, n_prompt - 1:]
    theirs = torch.stack([s[0] for s in step_logits])
    diff = float((ours - theirs).abs().max())
    text = model.config.text_config
    kinds = getattr(text, "layer_types", None) or ["full_attention"] * text.num_hidden_layers
    window = getattr(text, "sliding_window", None)
    vis = {}
    for kind, attn in zip(kinds, out.attentions):
        seen = (attn[0] > 0).any(0)
        want = expected_visibility(token_type, kind, window)
        assert torch.equal(seen, want), f"unexpected {kind} mask"
        if kind in vis:
            assert torch.equal(vis[kind], seen)
        vis[kind] = seen
    return diff, vis


def reference(model, processor, name: str):
    tensors, cases = {}, {}
    eos = 1
    for case, image_file, prompt in CASES:
        img = Image.open(IMAGES / image_file)
        inputs = processor(text=prompt, images=img, return_tensors="pt")
        calls, handle = capture_lm_kwargs(model)
        with torch.no_grad():
            px = inputs["pixel_values"].float()
            vision = model.model.vision_tower(px).last_hidden_state
            proj = model.model.multi_modal_projector(vision)
            calls.clear()
            logits = model(**inputs).logits[0]
            prefill_positions = calls[0][0]
            calls.clear()
            gen = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True)
        handle.remove()
        prompt_len = inputs["input_ids"].shape[1]
        ids = gen.sequences[0, prompt_len:].tolist()
        steps = [top_k(step[0]) for step in gen.logits]
        margins = [s[0][1] - s[1][1] for s in steps]
        uncached_diff, vis = check_uncached(model, inputs, ids, gen.logits)
        assert uncached_diff < 1e-4, f"{name}/{case}: uncached forward differs by {uncached_diff}"
        tensors[f"{case}.pixel_values"] = px.contiguous()
        tensors[f"{case}.vision"] = vision.contiguous()
        tensors[f"{case}.projector"] = proj.contiguous()
        tensors[f"{case}.logits"] = logits.float().contiguous()
        for kind, v in vis.items():
            tensors[f"{case}.visible_{kind.split('_')[0]}"] = v.to(torch.uint8).contiguous()
        cases[case] = {
            "image": image_file, "prompt": prompt,
            "prompt_ids": inputs["input_ids"][0].tolist(),
            "token_type_ids": inputs["token_type_ids"][0].tolist(),
            "generated_ids": ids,
            "generated_text": processor.tokenizer.decode(ids, skip_special_tokens=True),
            "top_logits": steps,
            "margins": margins,
            "min_margin": min(margins),
            "prefill_position_ids": prefill_positions,
            "decode_position_ids": [c[0][0] for c in calls[1:]],
            "uncached_max_abs_diff": uncached_diff,
        }
        if len(set(ids)) < 4:
            raise SystemExit(f"{name}/{case}: degenerate generation {ids}")
        if max(ids) >= model.config.text_config.vocab_size:
            raise SystemExit(f"{name}/{case}: id out of range {ids}")
    # Batched greedy generation with left padding.
    imgs = [Image.open(IMAGES / f) for _, f, _ in CASES]
    batch = processor(text=[p for _, _, p in CASES], images=imgs, return_tensors="pt", padding="longest")
    calls, handle = capture_lm_kwargs(model)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=MAX_NEW, do_sample=False)
    handle.remove()
    rows = []
    for row in out[:, batch["input_ids"].shape[1]:].tolist():
        cut = row.index(eos) + 1 if eos in row else len(row)
        rows.append(row[:cut])
    for (case, _, _), row in zip(CASES, rows):
        if row != cases[case]["generated_ids"]:
            print(f"note: {name}/{case}: batched greedy differs from single: {row} vs {cases[case]['generated_ids']}")
    save_file(tensors, EXPECTED / f"{name}.safetensors")
    meta = {
        **versions(), "max_new_tokens": MAX_NEW, "attn_implementation": "eager",
        "reference_dtype": "float32",
        "weights": "float32 as stored" if name == "pg1-tiny" else "bfloat16 as stored, widened to float32",
        "notes": NOTES,
        "cases": cases,
        "batch": {"cases": [c for c, _, _ in CASES], "input_ids": batch["input_ids"].tolist(),
                  "attention_mask": batch["attention_mask"].tolist(),
                  "token_type_ids": batch["token_type_ids"].tolist(),
                  "prefill_position_ids": calls[0], "first_decode_position_ids": calls[1],
                  "generated_ids": rows},
    }
    (EXPECTED / f"{name}.json").write_text(json.dumps(meta, indent=1))
    return meta


NOTES = {
    "positions": "transformers numbers positions from 1: a prompt of n tokens gets 1..n, the k-th generated "
                 "token (k from 0) sits at n+1+k. With left padding (batch) the first real token of each "
                 "row is 1 (cumsum of the attention mask, pads set to 1).",
    "token_type_ids": "The processor gives 0 to every prompt token (image, <bos>, text, \\n) and pads; "
                      "generated tokens are appended as 1 by generate().",
    "prefix_lm_mask": "Attention visibility (visible_<kind> tensors, [L, L] uint8 over prompt + generated "
                      "tokens but the last, read from the eager attention probabilities of one uncached "
                      "forward pass with token_type 1 on the generated tokens, which reproduces generate()'s "
                      "step logits): visible(q, k) = (k <= q AND (full layer OR k > q - sliding_window)) OR "
                      "(token_type[q] == 0 AND token_type[k] == 0). So the whole prompt is one bidirectional "
                      "block even in sliding layers where it is longer than the window, and each generated "
                      "token sees only the last sliding_window positions (itself included) in sliding layers. "
                      "Gemma 2 layer i is sliding when i is even.",
}


def make_checkpoints(tok: Tokenizer):
    results = {}
    for kind, name in [("pg1", "pg1-tiny"), ("pg2", "pg2-tiny")]:
        out = ROOT / name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        model, image_size = build_model(kind, tok, WEIGHT_SEEDS[kind])
        if kind == "pg1":
            save_hub_sharded(model, out, image_size)
            write_hub_processor_files(tok, out, image_size)
            # The hub layout and minimal config must load back into transformers
            # unchanged: same tensors, and (checked per case below) same logits.
            original = model
            model = PaliGemmaForConditionalGeneration.from_pretrained(out, attn_implementation="eager").eval()
            theirs = model.state_dict()
            for k, v in original.state_dict().items():
                assert torch.equal(v, theirs[k]), f"hub-layout checkpoint does not round-trip: {k}"
        else:
            # PaliGemma 2 ships bf16: round the weights once, save them as they are and
            # compute the reference in f32 from exactly those values.
            original = None
            model = model.to(torch.bfloat16)
            model.save_pretrained(out)
            make_processor(tok, image_size).save_pretrained(out)
            # Reload in f32 rather than upcasting in place: casting the live model to
            # bf16 also rounds its rotary inv_freq buffer, which a fresh load recomputes.
            model = PaliGemmaForConditionalGeneration.from_pretrained(
                out, dtype=torch.float32, attn_implementation="eager").eval()
            assert all(p.dtype == torch.float32 for p in model.parameters())
        processor = load_processor(out, image_size)
        results[name] = reference(model, processor, name)
        if original is not None:
            for case, image_file, prompt in CASES:
                inputs = processor(text=prompt, images=Image.open(IMAGES / image_file), return_tensors="pt")
                with torch.no_grad():
                    a, b = original(**inputs).logits, model(**inputs).logits
                assert torch.equal(a, b), f"{name}/{case}: reloaded hub checkpoint gives other logits"
    return results


class ResBlock(torch.nn.Module):
    """vae-oid's residual block: conv3x3 -> ReLU -> conv3x3 -> ReLU -> conv1x1, plus the
    input. All three convolutions keep 128 channels (big_vision's ResBlock uses its
    `features` for each of them), which is also what the real file's ~8.5 MB implies."""

    def __init__(self, c):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(c, c, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(c, c, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(c, c, 1))

    def forward(self, x):
        return x + self.net(x)


def vae_decoder():
    """An independent PyTorch version of the vae-oid mask decoder (see the spec):
    conv1x1 512->128 + ReLU, two residual blocks, four ConvTranspose(k4, s2, p1) + ReLU
    (128->128->64->32->16), conv1x1 16->1. Module indices match the npz names."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(512, 128, 1), torch.nn.ReLU(), ResBlock(128), ResBlock(128),
        torch.nn.ConvTranspose2d(128, 128, 4, 2, 1), torch.nn.ReLU(),
        torch.nn.ConvTranspose2d(128, 64, 4, 2, 1), torch.nn.ReLU(),
        torch.nn.ConvTranspose2d(64, 32, 4, 2, 1), torch.nn.ReLU(),
        torch.nn.ConvTranspose2d(32, 16, 4, 2, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 1, 1))


def vae_encoder():
    """An independent PyTorch version of the vae-oid mask encoder (see the spec and
    big_vision's `encode_to_codebook_indices`): four conv 4x4 stride 2 padding 1 + ReLU
    (1->16->32->64->128), two residual blocks, conv1x1 128->512. Indices match the npz."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 4, 2, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 4, 2, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 4, 2, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(64, 128, 4, 2, 1), torch.nn.ReLU(),
        ResBlock(128), ResBlock(128),
        torch.nn.Conv2d(128, 512, 1))


def encoder_inputs():
    """64 x 64 masks in [0, 1]: a disc, a square, a triangle (apex up), a soft ramp,
    random noise and an empty mask."""
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32) + 0.5
    disc = ((yy - 32) ** 2 + (xx - 32) ** 2 <= 30 ** 2).astype(np.float32)
    square = np.zeros((64, 64), np.float32)
    square[8:56, 8:56] = 1
    triangle = (np.abs(xx - 32) <= yy / 2).astype(np.float32)
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    noise = np.random.default_rng(5).random((64, 64), dtype=np.float32)
    return np.stack([disc, square, triangle, ramp, noise, np.zeros((64, 64), np.float32)])


def encode_codes(encoder, codebook, masks):
    """big_vision's encoding: masks in [0, 1] to [-1, 1], the encoder, then per cell of
    the 4 x 4 grid (row-major) the nearest codebook row by L2. Also returns each cell's
    gap between the nearest and the second-nearest distance."""
    with torch.no_grad():
        z = encoder(torch.from_numpy(masks)[:, None] * 2 - 1)  # [n, 512, 4, 4]
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).double()
        d = torch.cdist(flat, codebook.double()) ** 2
        best = d.topk(2, largest=False)
    gaps = (best.values[:, 1] - best.values[:, 0]).reshape(-1, 16)
    return best.indices[:, 0].reshape(-1, 16).contiguous(), gaps, z


def on_grid(t, step=1 / 256):
    """Values on a 1/256 grid: exact in f32 and compressible in the npz."""
    return torch.round(t / step) * step


def init_vae(decoder, gen):
    """He-style scales (fan-in over what reaches one output pixel, so 4 x in for the
    stride-2 transposed convolutions) keep every activation O(1); each residual
    branch's last conv is halved so the sums stay O(1) too."""
    with torch.no_grad():
        for name, m in decoder.named_modules():
            if isinstance(m, torch.nn.ConvTranspose2d):
                fan = m.in_channels * (m.kernel_size[0] // m.stride[0]) * (m.kernel_size[1] // m.stride[1])
            elif isinstance(m, torch.nn.Conv2d):
                fan = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            else:
                continue
            gain = 0.5 if name.endswith("net.4") else 1.0
            m.weight.copy_(on_grid(torch.randn(m.weight.shape, generator=gen) * gain * (2 / fan) ** 0.5))
            m.bias.copy_(on_grid(torch.randn(m.bias.shape, generator=gen) * 0.1))


def paste(mask64, box, width, height):
    """big_vision's evaluator: box tokens to pixels by truncation, PIL bilinear resize of
    the 64 x 64 float map to the box, threshold at 0. Returns the placed boolean mask
    and the resized float map."""
    y1, x1, y2, x2 = box
    y1, y2 = int(y1 / 1023 * height), int(y2 / 1023 * height)
    x1, x2 = int(x1 / 1023 * width), int(x2 / 1023 * width)
    small = Image.fromarray(mask64.astype(np.float32), mode="F")
    resized = np.array(small.resize((x2 - x1, y2 - y1), Image.BILINEAR))
    out = np.zeros((height, width), np.uint8)
    out[y1:y2, x1:x2] = resized > 0.0
    return out, resized


def vae_fixture():
    """Random weights with the real names and shapes of vae-oid.npz's decoder, and the
    decoder's output from an independent PyTorch implementation of it."""
    gen = torch.Generator().manual_seed(3)
    decoder = vae_decoder()
    init_vae(decoder, gen)
    codebook = on_grid(torch.randn(128, 512, generator=gen))
    codes = torch.tensor([[0, 127, 5, 9, 64, 3, 100, 42, 17, 88, 1, 2, 126, 77, 31, 60],
                          list(range(16)), [127] * 16], dtype=torch.int64)
    width, height = 320, 240
    boxes = [[51, 309, 708, 646], [500, 100, 530, 140]]  # y_min, x_min, y_max, x_max
    with torch.no_grad():
        x = codebook[codes].reshape(3, 4, 4, 512).permute(0, 3, 1, 2)
        # Centre the output on 0 so the evaluator's "> 0" threshold cuts through the
        # masks, then keep every resized value of the pasted masks clear of 0.
        decoder[12].bias -= on_grid(decoder(x)[0].median())
        for _ in range(100):
            masks = decoder(x)[:, 0]
            resized = [paste(masks[i].numpy(), box, width, height)[1] for i, box in enumerate(boxes)]
            if min(float(np.abs(r).min()) for r in resized) > 5e-5:
                break
            decoder[12].bias += 1 / 1024
        else:
            raise SystemExit("no bias keeps the resized masks clear of the threshold")
    pasted = np.stack([paste(masks[i].numpy(), box, width, height)[0] for i, box in enumerate(boxes)])
    inside = [float((r > 0).mean()) for r in resized]
    assert all(0.05 < f < 0.95 for f in inside), f"pasted masks are nearly all one side of 0: {inside}"
    arrays = {"_vq_vae._embedding": codebook.numpy()}
    for k, v in decoder.state_dict().items():
        arrays[f"decoder.{k}"] = v.numpy()
    # The encoder draws from its own generator, so the decoder fixture above is the same
    # with or without it.
    encoder = vae_encoder()
    init_vae(encoder, torch.Generator().manual_seed(4))
    for k, v in encoder.state_dict().items():
        arrays[f"encoder.{k}"] = v.numpy()
    inputs = encoder_inputs()
    enc_codes, gaps, latents = encode_codes(encoder, codebook, inputs)
    assert float(gaps.min()) > 1e-2, f"a grid cell is nearly equidistant from two codes: {float(gaps.min())}"
    assert len(set(enc_codes.flatten().tolist())) > 8, "the random encoder uses too few codes"
    save_file({"masks": torch.from_numpy(inputs), "codes": enc_codes, "latents": latents.contiguous()},
              EXPECTED / "mask_encoder.safetensors")
    out = ROOT / "vae"
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "vae-oid-random.npz", **arrays)
    text = " ; ".join(
        "".join(f"<loc{v:04d}>" for v in box) + "".join(f"<seg{int(c):03d}>" for c in codes[i]) + f" obj{i}"
        for i, box in enumerate(boxes))
    save_file({"codes": codes, "masks": masks.contiguous(), "pasted": torch.from_numpy(pasted)},
              EXPECTED / "vae.safetensors")
    meta = {"text": text, "width": width, "height": height,
            "mask_range": [float(masks.min()), float(masks.max())], "pasted_fraction_on": inside,
            "residual_block": "conv3x3 128->128, ReLU, conv3x3 128->128, ReLU, conv1x1 128->128, + input",
            "encoder_min_gap": float(gaps.min()), "encoder_codes_used": len(set(enc_codes.flatten().tolist()))}
    (EXPECTED / "vae.json").write_text(json.dumps(meta, indent=1))
    return meta


def main():
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    EXPECTED.mkdir(parents=True, exist_ok=True)
    make_images()
    processor_fixtures()
    tok = build_tokenizer()
    check_tokenizer(tok)
    results = make_checkpoints(tok)
    print("vae", vae_fixture()["mask_range"])
    for name, meta in results.items():
        print(name, {c: (len(set(v["generated_ids"])), round(v["min_margin"], 4)) for c, v in meta["cases"].items()})
    print(versions())


if __name__ == "__main__":
    main()
