#!/usr/bin/env python3
"""Prompt-to-prompt (P2P) editing references for EDICT, and a difflib alignment reference.

Uses the tiny model that make_fixtures.py wrote to tests/fixtures/tiny-sd/ and the inverted EDICT pair
of tests/fixtures/reference/edict.safetensors (run 0); it does not rebuild either. Writes:

  tests/fixtures/reference/p2p.safetensors   edited latent pairs, decoded images, masks/indices/weights
  tests/fixtures/reference/p2p.json          per-case settings and measured errors
  tests/fixtures/reference/difflib.json      difflib.SequenceMatcher opcodes for prompt pairs and
                                             seeded integer sequences

P2P semantics are the EDICT authors' (salesforce/EDICT edict_functions.py, adapted from bloc97's
CrossAttentionControl): each noise prediction runs the UNet on [uncond, source, target]; in the target
row the cross-attention probabilities of aligned tokens are taken from the source row (tokens window),
the self-attention probabilities are replaced by the source row's (self window), and the cross-attention
probabilities are multiplied column-wise by per-token weights (always, no renormalisation).

Run:  tests/reference/.venv/bin/python tests/reference/make_p2p.py      (see README.md)
"""

from __future__ import annotations

import difflib
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_fixtures as mf  # noqa: E402  (also sets determinism: 1 thread, deterministic algorithms)
import torch  # noqa: E402
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from diffusers.models.attention_processor import Attention  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import CLIPTextModel, CLIPTokenizer  # noqa: E402

MODEL, REF, log, rel = mf.MODEL, mf.REF, mf.log, mf.rel
N_TOKENS = 77


# ----------------------------------------------------------------------------------------------
# token alignment and weights
# ----------------------------------------------------------------------------------------------
def align(src_ids: list[int], tgt_ids: list[int]):
    """mask[b] = 1 where target token b is aligned with source token index[b] (authors' init_attention_edit):
    equal blocks and same-length replacements are aligned position by position."""
    mask, index = [0] * len(tgt_ids), [0] * len(tgt_ids)
    for tag, a0, a1, b0, b1 in difflib.SequenceMatcher(None, src_ids, tgt_ids).get_opcodes():
        if tag == "equal" or (tag == "replace" and a1 - a0 == b1 - b0):
            mask[b0:b1] = [1] * (b1 - b0)
            index[b0:b1] = list(range(a0, a1))
    return mask, index


def token_weights(tok, tgt_ids: list[int], reweight: list[tuple[str, float]]):
    """1 everywhere except at every occurrence of each word's token sequence (BOS/EOS stripped)."""
    w = [1.0] * len(tgt_ids)
    for word, value in reweight:
        seq = tok(word).input_ids[1:-1]
        assert seq, word
        hits = [s for s in range(len(tgt_ids) - len(seq) + 1) if tgt_ids[s : s + len(seq)] == seq]
        assert hits, f"{word!r} not in the target prompt"
        for s in hits:
            for k in range(len(seq)):
                w[s + k] = value
    return w


# ----------------------------------------------------------------------------------------------
# attention control: one processor per Attention module, sharing a controller
# ----------------------------------------------------------------------------------------------
class Controller:
    """mode "off": plain attention. "p2p": batch [uncond, source, target], the target row (2) is edited
    from the source row (1). "reweight": batch [uncond, target], the target row (1) is reweighted."""

    def __init__(self):
        self.mode = "off"
        self.t = None
        self.mask = self.index = self.weights = None
        self.tokens = (0.0, 1.0)
        self.self_ = (0.0, 1.0)
        self.all_rows = False  # only for the sensitivity check: reweight the unconditional row too (wrong)

    def active(self, window) -> bool:
        return window[0] <= self.t / 1000 <= window[1]


class P2PAttnProcessor:
    """diffusers' classic AttnProcessor (get_attention_scores, bmm) with the probabilities edited."""

    def __init__(self, ctl: Controller, cross: bool):
        self.ctl, self.cross = ctl, cross

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        assert attn.spatial_norm is None and attn.group_norm is None and not attn.residual_connection
        assert attention_mask is None and hidden_states.ndim == 3
        assert self.cross == (encoder_hidden_states is not None)
        batch = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        key, value = attn.to_k(ctx), attn.to_v(ctx)
        query, key, value = (attn.head_to_batch_dim(x) for x in (query, key, value))
        probs = attn.get_attention_scores(query, key, None)  # [batch*heads, n_q, n_k], batch-major
        probs = self.edit(probs.view(batch, attn.heads, *probs.shape[1:])).reshape(probs.shape)
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        return out / attn.rescale_output_factor

    def edit(self, p):
        c = self.ctl
        if c.mode == "off":
            return p
        p = p.clone()
        if c.mode == "p2p":
            assert p.shape[0] == 3
            src, tgt = p[1], p[2]
            if self.cross and c.active(c.tokens):
                tgt = tgt * (1 - c.mask) + src[..., c.index] * c.mask
            if not self.cross and c.active(c.self_):
                tgt = src
            if self.cross:
                tgt = tgt * c.weights
            p[2] = tgt
        elif c.mode == "reweight":
            assert p.shape[0] == 2
            if self.cross:
                p[1] = p[1] * c.weights
                if c.all_rows:
                    p[0] = p[0] * c.weights
        else:
            raise ValueError(c.mode)
        return p


def install(unet) -> Controller:
    ctl = Controller()
    procs = {}
    for name in unet.attn_processors:
        kind = name.split(".")[-2]
        assert kind in ("attn1", "attn2"), name
        procs[name] = P2PAttnProcessor(ctl, cross=kind == "attn2")
    unet.set_attn_processor(procs)
    return ctl


class P2PGuided:
    """eps(z, t) = eps_u + g (eps_target - eps_u); [uncond, source, target] (p2p) or [uncond, target]."""

    def __init__(self, unet, ctl, uncond, source, target, g, p2p, mask, index, weights, tokens, self_,
                 all_rows=False):
        self.unet, self.ctl, self.g, self.p2p = unet, ctl, g, p2p
        self.ctx = torch.cat([uncond, source, target] if p2p else [uncond, target])
        self.cfg = dict(mode="p2p" if p2p else "reweight", mask=mask, index=index, weights=weights,
                        tokens=tuple(tokens), self_=tuple(self_), all_rows=all_rows)

    @torch.no_grad()
    def __call__(self, z, t):
        for k, v in self.cfg.items():
            setattr(self.ctl, k, v)
        self.ctl.t = t
        n = 3 if self.p2p else 2
        out = self.unet(torch.cat([z] * n), t, encoder_hidden_states=self.ctx).sample
        self.ctl.mode = "off"
        eps_u, eps_t = out[:1], out[-1:]
        return eps_u + self.g * (eps_t - eps_u)


# ----------------------------------------------------------------------------------------------
# difflib reference
# ----------------------------------------------------------------------------------------------
PROMPT_PAIRS = [
    ("a photo of a cat", "a photo of a cat"),  # identical
    ("a photo of a cat", "a photo of a dog"),  # one-word replacement
    ("cat", "dog"),
    ("A Photo Of A Cat", "a photo of a cat"),  # same ids after lowercasing
    ("a photo of a cat", "a photo of a hippopotamus"),  # 1 token -> 3 tokens
    ("a photo of a hippopotamus", "a photo of a rhinoceros"),  # 3 -> 3 tokens
    ("a photo of a hippopotamus", "a photo of a cat"),  # 3 -> 1
    ("a painting of a fox in the style of monet", "a photo of a fox in the style of van gogh"),
    ("photo of a cat", "a photo of a cat"),  # insertion at the start
    ("a photo of a cat", "a photo of a fluffy cat"),  # insertion in the middle
    ("a photo of a cat", "a photo of a cat wearing a hat"),  # insertion at the end
    ("a photo of a cat", "a watercolor photo of a fluffy cat"),  # two insertions
    ("a photo of a fluffy cat", "a photo of a cat"),  # deletion
    ("a cat sitting on a red sofa", "a cat sitting"),  # deletion at the end
    ("a cat and a dog", "a dog and a cat"),  # reordering
    ("red car, blue house", "blue car, red house"),  # swap
    ("a cat and a cat and a dog", "a cat and a dog and a cat"),  # repeated words
    ("a cat and a cat and a dog", "a dog and a cat and a cat"),
    ("a cat and a cat and a dog", "a cat and a cat and a cat"),
    ("a cat", "a cat cat cat cat"),
    ("", "a photo of a cat"),  # empty source
    ("a photo of a cat", ""),  # empty target
    ("", ""),
    ("a cat, a dog.", "a cat; a dog!"),  # punctuation
    ("a photo of a cat", "a photo of a cat!!!"),
    ("a photo of a cat", "a photo of a 🐶"),  # emoji
    (mf.LONG_5, mf.LONG_6),  # 77 tokens vs 76 (no truncation)
    (mf.LONG_6, mf.LONG_6 + " now"),  # 77 tokens vs 78 truncated to the same 77 ids
    (mf.LONG_1, mf.LONG_1.replace("cyberpunk city", "medieval village")),  # both truncated
    (mf.LONG_1, "a cat"),  # everything deleted
    ("a cat", mf.LONG_3),  # target truncated
]


def make_difflib(tok):
    pairs = []
    for s, t in PROMPT_PAIRS:
        a = mf.tokenize(tok, s)[0].tolist()
        b = mf.tokenize(tok, t)[0].tolist()
        mask, index = align(a, b)
        ops = [list(o) for o in difflib.SequenceMatcher(None, a, b).get_opcodes()]
        pairs.append({"source": s, "target": t, "source_ids": a, "target_ids": b, "opcodes": ops,
                      "mask": mask, "index": index})
    rng = random.Random(mf.BASE_SEED + 100)

    def rand_seq(n, k):
        return [rng.randrange(k) for _ in range(n)]

    def mutate(a, k, n_edits):
        b = list(a)
        for _ in range(n_edits):
            op = rng.randrange(3)
            if op == 0 or not b:
                b.insert(rng.randint(0, len(b)), rng.randrange(k))
            elif op == 1:
                del b[rng.randrange(len(b))]
            else:
                b[rng.randrange(len(b))] = rng.randrange(k)
        return b

    seqs = []
    for k in (2, 3, 4, 5, 6):  # independent random pairs, small alphabets, lengths 0..40
        for _ in range(4):
            seqs.append((rand_seq(rng.randint(0, 40), k), rand_seq(rng.randint(0, 40), k)))
    for k in (2, 3, 4, 5, 6):  # b = a with a few edits: long matching blocks
        for _ in range(4):
            a = rand_seq(rng.randint(1, 80), k)
            seqs.append((a, mutate(a, k, rng.randint(1, 8))))
    seqs += [([], []), ([], [1, 2, 3]), ([1, 2, 3], []), ([7], [7]), ([1, 2], [2, 1])]
    for k in (50, 1000):  # larger alphabets, medium lengths
        for _ in range(3):
            a = rand_seq(rng.randint(20, 150), k)
            seqs.append((a, mutate(a, k, rng.randint(1, 20))))
    # len(b) >= 200: difflib's autojunk drops b's "popular" elements (> 1 + len(b)//100 occurrences) from
    # the match index; with small alphabets every element is popular
    for k, na, nb in ((2, 50, 200), (3, 210, 230), (6, 120, 260), (4, 0, 220), (5, 240, 199)):
        seqs.append((rand_seq(na, k), rand_seq(nb, k)))
    for k in (2, 6):
        a = rand_seq(230, k)
        seqs.append((a, mutate(a, k, 10)))
    for k, n in ((100, 220), (150, 250), (400, 260)):  # some popular elements, some not
        a = [min(rng.randrange(k), rng.randrange(k)) for _ in range(n)]  # skewed towards small values
        seqs.append((a, mutate(a, k, 15)))
    # one very popular element (0) in a long b, next to rarer ones: 0s that only match away from a
    # matching block of rare elements stay unmatched with autojunk
    a = [rng.randrange(1, 1000) if rng.random() < 0.8 else 0 for _ in range(60)]
    b = mutate(a, 1000, 30)
    for _ in range(150):
        b.insert(rng.randint(0, len(b)), 0)
    seqs.append((a, b))
    n_junk = sum(difflib.SequenceMatcher(None, a, b).get_opcodes()
                 != difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes() for a, b in seqs)
    log(f"  {n_junk} sequence pairs whose opcodes change with autojunk=False")
    assert n_junk >= 6, n_junk
    seq_rows = [{"a": a, "b": b, "opcodes": [list(o) for o in difflib.SequenceMatcher(None, a, b).get_opcodes()]}
                for a, b in seqs]
    return pairs, seq_rows


def write_difflib(tok):
    pairs, seqs = make_difflib(tok)
    with open(REF / "difflib.json", "w", encoding="utf-8") as f:  # one entry per line
        f.write('{"prompt_pairs": [\n')
        f.write(",\n".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in pairs))
        f.write('\n], "sequences": [\n')
        f.write(",\n".join(json.dumps(r, separators=(",", ":")) for r in seqs))
        f.write("\n]}\n")
    n_big = sum(len(r["b"]) >= 200 for r in seqs)
    log(f"  difflib.json: {len(pairs)} prompt pairs, {len(seqs)} sequence pairs ({n_big} with len(b) >= 200)")


# ----------------------------------------------------------------------------------------------
CASES = [
    dict(name="p2p_default", target="a photo of a dog", p2p=True, tokens=[0.0, 1.0], self=[0.0, 1.0], reweight=[]),
    dict(name="p2p_windows", target="a watercolor photo of a fluffy cat", p2p=True, tokens=[0.2, 0.6],
         self=[0.45, 1.0], reweight=[["fluffy", 2.0], ["watercolor", 0.5]]),
    dict(name="reweight_only", target="a photo of a dog", p2p=False, tokens=[0.0, 1.0], self=[0.0, 1.0],
         reweight=[["dog", 3.0]]),
]


def main():
    t_start = time.time()
    tok = CLIPTokenizer.from_pretrained(str(MODEL / "tokenizer"))
    assert tok.fix_text is not None, "ftfy must be installed"
    log("difflib reference")
    write_difflib(tok)

    log("P2P reference (float64)")
    unet = UNet2DConditionModel.from_pretrained(str(MODEL / "unet")).eval().double()
    vae = AutoencoderKL.from_pretrained(str(MODEL / "vae")).eval().double()
    te = CLIPTextModel.from_pretrained(str(MODEL / "text_encoder")).eval().double()
    ed = load_file(str(REF / "edict.safetensors"))
    ac, z0 = ed["alphas_cumprod"], ed["latent"]
    inv_x, inv_y = ed["run0_inv_x"], ed["run0_inv_y"]
    assert torch.equal(ac, mf.alphas_cumprod_f64()[0])
    src, uncond_prompt, g, mix, steps, strength = "a photo of a cat", "", 3.0, 0.93, 10, 0.8
    ts, stride = mf.edict_timesteps(steps, strength)
    assert ts == [700, 600, 500, 400, 300, 200, 100, 0], ts

    prompts = [uncond_prompt, src] + sorted({c["target"] for c in CASES})
    with torch.no_grad():
        torch.set_default_dtype(torch.float64)  # CLIP's causal mask is built in the default dtype
        emb = {s: te(mf.tokenize(tok, s)).last_hidden_state for s in prompts}
        torch.set_default_dtype(torch.float32)
    e_u, e_s = rel(emb[""], ed["text_uncond"]), rel(emb[src], ed["text_source"])
    e_d = rel(emb["a photo of a dog"], ed["text_target"])
    log(f"  text encoder vs edict.safetensors: uncond {e_u:.2e}  source {e_s:.2e}  dog {e_d:.2e}")
    assert max(e_u, e_s, e_d) < 1e-12

    # plain EDICT (default diffusers processors) reproduces the stored run 0
    eps_src = mf.Guided(unet, emb[""], emb[src], g)
    recon_x, _ = mf.edict_denoise(inv_x, inv_y, ts, stride, ac, eps_src, mix)
    e_recon = rel(recon_x, ed["run0_recon_x"])
    log(f"  plain EDICT recon vs run0_recon_x: {e_recon:.2e}   vs latent: {rel(recon_x, z0):.2e}")
    assert e_recon < 1e-12

    # (1) the processor with no edit equals diffusers' default processor
    gen = torch.Generator().manual_seed(mf.BASE_SEED + 200)
    zt = torch.randn(3, 4, 8, 8, generator=gen, dtype=torch.float64)
    ctx3 = torch.cat([emb[""], emb[src], emb["a photo of a dog"]])
    with torch.no_grad():
        ref_out = {t: unet(zt, t, encoder_hidden_states=ctx3).sample for t in (700, 0)}
    default_procs = dict(unet.attn_processors)
    assert type(next(iter(default_procs.values()))).__name__ == "AttnProcessor2_0"
    ctl = install(unet)
    assert len(unet.attn_processors) == 32  # 16 transformer blocks x (attn1, attn2)
    e_proc = 0.0
    with torch.no_grad():
        for t, want in ref_out.items():
            e_proc = max(e_proc, rel(unet(zt, t, encoder_hidden_states=ctx3).sample, want))
            # p2p / reweight modes with identity edits change nothing either
            ones, ident = torch.ones(N_TOKENS, dtype=torch.float64), torch.arange(N_TOKENS)
            for mode in ("p2p", "reweight"):
                ctl.mode, ctl.t, ctl.mask, ctl.index, ctl.weights = mode, t, ones * 0, ident, ones
                ctl.tokens = ctl.self_ = (2.0, 3.0)  # windows never active
                rows = [0, 1, 2] if mode == "p2p" else [0, 2]
                got = unet(zt[rows], t, encoder_hidden_states=ctx3[rows]).sample
                e_proc = max(e_proc, rel(got, want[rows]))
            ctl.mode = "off"
    log(f"  custom processor (no edit) vs diffusers' default processor: {e_proc:.2e}")
    assert e_proc < 1e-12

    # and through the whole EDICT edit: no P2P, weights 1 == the stored plain edit
    src_ids = mf.tokenize(tok, src)[0].tolist()
    dog_ids = mf.tokenize(tok, "a photo of a dog")[0].tolist()
    ones = torch.ones(N_TOKENS, dtype=torch.float64)
    plain = P2PGuided(unet, ctl, emb[""], emb[src], emb["a photo of a dog"], g, False, None, None, ones,
                      [0, 1], [0, 1])
    plain_x, _ = mf.edict_denoise(inv_x, inv_y, ts, stride, ac, plain, mix)
    e_plain = rel(plain_x, ed["run0_edit_x"])
    log(f"  reweight path with weights 1 vs run0_edit_x: {e_plain:.2e}")
    assert e_plain < 1e-12

    # (2) P2P with target = source round-trips
    m, ix = align(src_ids, src_ids)
    assert m == [1] * N_TOKENS and ix == list(range(N_TOKENS))
    same = P2PGuided(unet, ctl, emb[""], emb[src], emb[src], g, True, torch.tensor(m, dtype=torch.float64),
                     torch.tensor(ix), ones, [0, 1], [0, 1])
    rt_x, rt_y = mf.edict_denoise(inv_x, inv_y, ts, stride, ac, same, mix)
    e_rt, e_rt_y = rel(rt_x, z0), rel(rt_y, z0)
    log(f"  P2P target = source round trip: x {e_rt:.2e}  y {e_rt_y:.2e}")
    assert e_rt < 1e-10 and e_rt_y < 1e-10

    out = {"source_ids": torch.tensor(src_ids, dtype=torch.int64)}
    meta_cases = []
    for c in CASES:
        name, tgt = c["name"], c["target"]
        tgt_ids = mf.tokenize(tok, tgt)[0].tolist()
        mask, index = align(src_ids, tgt_ids)
        weights = token_weights(tok, tgt_ids, c["reweight"])
        mask_t = torch.tensor(mask, dtype=torch.float64)
        index_t = torch.tensor(index, dtype=torch.int64)
        weights_t = torch.tensor(weights, dtype=torch.float64)
        eps = P2PGuided(unet, ctl, emb[""], emb[src], emb[tgt], g, c["p2p"], mask_t, index_t, weights_t,
                        c["tokens"], c["self"])
        edit_x, edit_y = mf.edict_denoise(inv_x, inv_y, ts, stride, ac, eps, mix)
        with torch.no_grad():
            image = vae.decode(edit_x / mf.SCALING_FACTOR).sample
        out.update({f"{name}_edit_x": edit_x, f"{name}_edit_y": edit_y, f"{name}_image": image,
                    f"{name}_mask": mask_t, f"{name}_index": index_t, f"{name}_weights": weights_t,
                    f"{name}_target_ids": torch.tensor(tgt_ids, dtype=torch.int64)})
        active_tok = [t for t in ts if c["tokens"][0] <= t / 1000 <= c["tokens"][1]]
        active_self = [t for t in ts if c["self"][0] <= t / 1000 <= c["self"][1]]
        meta = {"name": name, "source": src, "target": tgt, "uncond": uncond_prompt, "p2p": c["p2p"],
                "tokens": c["tokens"], "self": c["self"], "reweight": c["reweight"],
                "steps": steps, "strength": strength, "guidance": g, "mix": mix, "leapfrog": True,
                "timesteps": ts, "stride": stride,
                "tokens_active_timesteps": active_tok if c["p2p"] else [],
                "self_active_timesteps": active_self if c["p2p"] else [],
                "edit_vs_latent_rel": rel(edit_x, z0), "edit_y_vs_latent_rel": rel(edit_y, z0),
                "edit_vs_plain_edit_rel": rel(edit_x, ed["run0_edit_x"])}
        if not c["p2p"]:
            meta["note"] = "mask/index are the source->target alignment, stored for reference; unused without P2P"
        log(f"  {name}: target {tgt!r} p2p={c['p2p']} tokens {c['tokens']} {meta['tokens_active_timesteps']} "
            f"self {c['self']} {meta['self_active_timesteps']} reweight {c['reweight']}")
        log(f"    mask {mask[:10]}.. index {index[:10]}.. weights {[w for w in weights if w != 1.0]} "
            f"at {[i for i, w in enumerate(weights) if w != 1.0]}")
        log(f"    edit_x vs latent {meta['edit_vs_latent_rel']:.4e}   vs plain EDICT edit (run0_edit_x) "
            f"{meta['edit_vs_plain_edit_rel']:.4e}")
        mf.stats(f"{name}_image", image)
        meta_cases.append(meta)
    assert meta_cases[0]["edit_vs_plain_edit_rel"] > 1e-3, "P2P made no difference"

    # how much the stored edits move when one detail is done differently (what the fixtures can detect)
    def variant(name, **change):
        c = {**next(c for c in CASES if c["name"] == name), **change}
        pre = f"{name}_"
        mask = change.get("mask", out[pre + "mask"])
        eps = P2PGuided(unet, ctl, emb[""], emb[src], emb[c["target"]], g, c["p2p"], mask, out[pre + "index"],
                        change.get("weights", out[pre + "weights"]), c["tokens"], c["self"],
                        change.get("all_rows", False))
        return rel(mf.edict_denoise(inv_x, inv_y, ts, stride, ac, eps, mix)[0], out[pre + "edit_x"])

    never = [2.0, 3.0]
    sens = {
        "p2p_windows_no_reweight": variant("p2p_windows", weights=ones),
        "p2p_windows_tokens_window_exclusive_ends": variant("p2p_windows", tokens=[0.21, 0.59]),
        "p2p_windows_self_window_from_0.51": variant("p2p_windows", self=[0.51, 1.0]),
        "p2p_windows_no_self_injection": variant("p2p_windows", self=never),
        "p2p_windows_no_token_injection": variant("p2p_windows", tokens=never),
        "p2p_default_no_self_injection": variant("p2p_default", self=never),
        "p2p_default_no_token_injection": variant("p2p_default", tokens=never),
        "p2p_default_replaced_token_not_injected": variant(
            "p2p_default", mask=out["p2p_default_mask"] * (torch.arange(N_TOKENS) != 5)),
        "reweight_only_weights_on_the_uncond_row_too": variant("reweight_only", all_rows=True),
    }
    for k, v in sens.items():
        log(f"  sensitivity {k}: {v:.3e}")
        assert v > 1e-3, k
    for k, v in out.items():
        want = torch.int64 if k.endswith(("_ids", "_index")) else torch.float64
        assert v.dtype == want, (k, v.dtype)
    mf.save(out, REF / "p2p.safetensors")
    meta = {
        "semantics": "salesforce/EDICT edict_functions.py (bloc97 CrossAttentionControl): eps = eps_u + g*(eps_target - "
                     "eps_u), UNet batch [uncond, source, target]; target row: cross-attn probs of aligned tokens from "
                     "the source row while tokens[0] <= t/1000 <= tokens[1], self-attn probs = source row's while "
                     "self[0] <= t/1000 <= self[1], cross-attn probs * weights always (no renormalisation). "
                     "Without p2p: batch [uncond, target], weights on the target row.",
        "inverted_pair": "edict.safetensors run0_inv_x / run0_inv_y (plain EDICT inversion with the source prompt)",
        "roundtrip_target_equals_source_rel_err_x": e_rt, "roundtrip_target_equals_source_rel_err_y": e_rt_y,
        "processor_vs_default_rel_err": e_proc,
        "sensitivity": {"about": "rel change of edit_x when one detail is done differently", **sens},
        "cases": meta_cases,
    }
    with open(REF / "p2p.json", "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    for p in ("p2p.safetensors", "p2p.json", "difflib.json"):
        log(f"  {(REF / p).stat().st_size:>8d}  {(REF / p).relative_to(mf.ROOT)}")
    log(f"done in {time.time() - t_start:.1f} s")


if __name__ == "__main__":
    main()
