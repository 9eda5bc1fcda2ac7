"""A structured initialisation that lets the tiny LLaVA pick the named
object (README "The experiment", try 17): written into a gated model (after
`spr tiny gate`); `spr train --freeze` then keeps these parts as set while
the rest of the language model learns to read the box and write the answer.
Ten tries of learning the pick from the box loss alone failed (demo REC
Acc@0.5 at most 10 %), so it is set by hand here. Python (torch) for now;
a `spr tiny` command is still to come.

1. Marks in the image tokens: 12 projector units become the frozen tower's
   per-category read-outs (least squares on a scene project's patches; a
   patch counts for a category when its objects cover COVER of it), each
   writing its colour's and its shape's key direction D; 4 units carry the
   patch's object edges linearly (3 + 4·edge) along L; a large constant K
   in the projector's bias gives every image token about the same norm, so
   the RMS norms scale the edges alike on every patch.
2. A gather head (layer 0): every text token carries a shared direction u,
   the name-word tokens (colours, shapes, "circle?" too) a marker n; the
   head's query reads u, its key n (RoPE's slowest pair, so position hardly
   matters), its value the word's own embedding, written back along a name
   direction r. After the question, every position holds r[colour] +
   r[shape] of the asked name.
3. A match head (layer 1): query r_j, key D_j (7 slow RoPE pairs), so its
   score counts how many of colour and shape a patch matches; its value is
   the 4 edge directions (written along O) and 60 dims of the gate units'
   span.

Usage: python scripts/tiny_pick_heads.py MODEL_DIR OUT_DIR SCENES_DIR N_SCENES [EVAL_DATA_DIR [COVER]]
With EVAL_DATA_DIR (a `spr tiny data` folder) it prints the match head's
share of image attention on the asked object while the box's digits are
written (teacher-forced answers of its whole-scene REC rows).
"""
import json
import shutil
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformers import LlavaForConditionalGeneration

src, dst, root, n_sc = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
eval_root = sys.argv[5] if len(sys.argv) > 5 else None
ALPHA, GATHER, MATCH, NAME, EDGE_OUT, KBIG = 2.0, 1.0, 6.0, 1.0, 0.1, 5.0
H0, HC = 3, 3
COVER = float(sys.argv[6]) if len(sys.argv) > 6 else 0.25  # the head used in layer 0 and in layer 1
torch.manual_seed(0)
m = LlavaForConditionalGeneration.from_pretrained(src).eval()
tok = Tokenizer.from_file(src + "/tokenizer.json")
vc = m.config.vision_config
G = vc.image_size // vc.patch_size
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]


def pixels(path):
    pil = Image.open(path).convert("RGB").resize((vc.image_size, vc.image_size), Image.BICUBIC)
    return ((torch.tensor(np.asarray(pil)).permute(2, 0, 1).float() / 255 - MEAN) / STD)[None]


def overlap(im, box):
    """Share of each patch the box covers."""
    x, y, w, h = box
    pw, ph = im["width"] / G, im["height"] / G
    c = np.zeros(G * G)
    for i in range(G):
        for j in range(G):
            ix = max(0, min(x + w, (j + 1) * pw) - max(x, j * pw)); iy = max(0, min(y + h, (i + 1) * ph) - max(y, i * ph))
            c[i * G + j] = ix * iy / (pw * ph)
    return c


def touch(im, box):
    """Patches that overlap the box."""
    x, y, w, h = box
    c = np.zeros(G * G, bool)
    for i in range(G):
        for j in range(G):
            x0 = j / G * im["width"]; y0 = i / G * im["height"]
            x1 = (j + 1) / G * im["width"]; y1 = (i + 1) / G * im["height"]
            c[i * G + j] = x < x1 and x + w > x0 and y < y1 and y + h > y0
    return c


tower = m.model.vision_tower if hasattr(m, "model") and hasattr(m.model, "vision_tower") else m.vision_tower
ann = json.load(open(root + "/annotations.json"))
cats = {c["id"]: c["name"] for c in ann["categories"]}
cid = sorted(cats)
by = {}
for a in ann["annotations"]:
    by.setdefault(a["image_id"], []).append(a)
X, Y, EB = [], [], []
for im in ann["images"][:n_sc]:
    with torch.no_grad():
        h = tower(pixels(root + "/images/" + im["file_name"]), output_hidden_states=True).hidden_states[-2][0, 1:].numpy()
    lab = np.zeros((G * G, len(cid)))  # per category: the largest share of a patch its objects cover
    best = np.zeros(G * G); edge = np.zeros((G * G, 4))  # the most-overlapping object's box (0-1)
    for o in by.get(im["id"], []):
        k = cid.index(o["category_id"]); ov = overlap(im, o["bbox"]); lab[:, k] = np.maximum(lab[:, k], ov)
        x, y, w, hh = o["bbox"]
        sel = ov > best; best[sel] = ov[sel]
        edge[sel] = [x / im["width"], y / im["height"], (x + w) / im["width"], (y + hh) / im["height"]]
    X.append(h); Y.append(lab); EB.append(np.where((best >= COVER)[:, None], edge, np.nan))
X = np.concatenate(X); Y = np.concatenate(Y) >= COVER; EB = np.concatenate(EB)
Xb = np.hstack([X, np.ones((len(X), 1))])
W = np.linalg.lstsq(Xb, Y.astype(float), rcond=None)[0]
P = Xb @ W
on_obj = ~np.isnan(EB[:, 0])
WE = np.linalg.lstsq(Xb[on_obj], EB[on_obj], rcond=None)[0]  # the covering object's edges
print("edge read-out error on object patches", np.abs(Xb[on_obj] @ WE - EB[on_obj]).mean(0).round(3))

sd = load_file(src + "/model.safetensors")
E = sd["language_model.model.embed_tokens.weight"].double()
dim = E.shape[1]
colours = sorted({cats[c].split()[0] for c in cid}); shapes = sorted({cats[c].split()[1] for c in cid})
words = colours + shapes
# Every token that is a name word with punctuation after it ("▁circle?").
vocab = tok.get_vocab()
wid, wj = [], []
for j, w in enumerate(words):
    for t, i in sorted(vocab.items()):
        if t.startswith("\u2581" + w) and all(not ch.isalnum() for ch in t[len(w) + 1:]):
            wid.append(i); wj.append(j)
assert sorted(set(wj)) == list(range(len(words))), wj
print("name tokens", [(tok.id_to_token(i), words[j]) for i, j in zip(wid, wj)])
# Directions: u, n, r_0..6, D_0..6, orthogonal to each other and to the name words' embeddings.
g = torch.Generator().manual_seed(1)
basis = [E[i] / E[i].norm() for i in wid]
new = []
for _ in range(2 + 2 * len(words) + 9):
    v = torch.randn(dim, generator=g, dtype=torch.float64)
    for b in basis + new:
        v -= (v @ b) * b
    new.append(v / v.norm())
u, n, r, D = new[0], new[1], new[2:2 + len(words)], new[2 + len(words):2 + 2 * len(words)]
Ldir, Odir, K = new[2 + 2 * len(words):-5], new[-5:-1], new[-1]  # edges in image tokens; at the answer; a constant
e_norm = float(E.norm(dim=1).mean())
E2 = E + e_norm * u  # every text token reads u
ename = [E[i] / E[i].norm() for i in wid]
for a, i in enumerate(wid):  # name tokens: one norm, so the gather head weighs them alike
    E2[i] = e_norm * (ename[a] + u + n)
img_tok = m.config.image_token_index
sd["language_model.model.embed_tokens.weight"] = E2.float()

# 1. category units in the projector (units 64.., after the gate's 64)
with torch.no_grad():
    proj = m.model.multi_modal_projector if hasattr(m, "model") and hasattr(m.model, "multi_modal_projector") else m.multi_modal_projector
    feats = proj(torch.tensor(X[: 64 * 50], dtype=torch.float32))
tok_norm = float(feats.norm(dim=-1).mean())
w1 = sd["multi_modal_projector.linear_1.weight"].clone(); b1 = sd["multi_modal_projector.linear_1.bias"].clone()
w2 = sd["multi_modal_projector.linear_2.weight"].clone()
acc = []
for k, c in enumerate(cid):
    own = Y[:, k]; on = P[own, k]; off = P[~own, k]
    t = (np.quantile(off, 0.99) + np.quantile(on, 0.10)) / 2
    gain = 8.0 / max(on.mean() - t, 1e-3)
    acc.append(((P[:, k] > t) == own).mean())
    unit = 64 + k
    w1[unit] = torch.tensor(gain * W[:-1, k], dtype=w1.dtype); b1[unit] = float(gain * (W[-1, k] - t))
    colour, shape = cats[c].split()
    key = D[words.index(colour)] + D[words.index(shape)]
    w2[:, unit] = (ALPHA * tok_norm * key / 8.0).float()
print("image-token norm %.2f; per-category indicator accuracy" % tok_norm, np.round(acc, 3))
# 4 units (after the category units) carry the covering object's edges linearly: gelu(3 + 4 e) ≈ 3 + 4 e.
edge_units = list(range(64 + len(cid), 64 + len(cid) + 4))
for e, unit in enumerate(edge_units):
    w1[unit] = torch.tensor(4 * WE[:-1, e], dtype=w1.dtype); b1[unit] = float(4 * WE[-1, e] + 3)
    w2[:, unit] = (ALPHA * tok_norm * Ldir[e] / 5.0).float()
# The keys come from the category units alone: the other units and the bias
# lose their part along D.
Dm = torch.stack(D + Ldir, 1).float()  # dim × 11
cat_units = list(range(64, 64 + len(cid)))
others = [j for j in range(w2.shape[1]) if j not in cat_units + edge_units]
w2[:, others] -= Dm @ (Dm.T @ w2[:, others])
b2 = sd["multi_modal_projector.linear_2.bias"].clone(); b2 -= Dm @ (Dm.T @ b2)
# A large constant part gives every image token about the same norm, so the
# RMS norm before each layer scales the edges alike on every patch.
b2 += (KBIG * tok_norm * K).float()
sd["multi_modal_projector.linear_2.bias"] = b2
sd["multi_modal_projector.linear_1.weight"] = w1; sd["multi_modal_projector.linear_1.bias"] = b1
sd["multi_modal_projector.linear_2.weight"] = w2
hd = dim // m.config.text_config.num_attention_heads
half = hd // 2


# 2. gather head, layer 0
p = "language_model.model.layers.0.self_attn."
q = torch.zeros(hd, dim); k = torch.zeros(hd, dim); v = torch.zeros(hd, dim)
q[half - 1] = (GATHER * u).float(); k[half - 1] = n.float()
g0 = sd["language_model.model.layers.0.input_layernorm.weight"].double()
for a, i in enumerate(wid):
    xn = E2[i] / E2[i].pow(2).mean().sqrt() * g0
    v[wj[a]] += (ename[a] / (ename[a] @ xn)).float()  # value 1 on each of its word's tokens
o = sd[p + "o_proj.weight"].clone(); o[:, H0 * hd:(H0 + 1) * hd] = 0
for j in range(len(words)):
    o[:, H0 * hd + j] = (r[j] * NAME).float()  # colour and shape share the attention
for name, t in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
    w = sd[p + name + ".weight"].clone(); w[H0 * hd:(H0 + 1) * hd] = t; sd[p + name + ".weight"] = w
sd[p + "o_proj.weight"] = o

# 3. match head, layer 1
p = "language_model.model.layers.1.self_attn."
q = torch.zeros(hd, dim); k = torch.zeros(hd, dim)
for j in range(len(words)):
    q[half - 1 - j] = (MATCH * r[j]).float(); k[half - 1 - j] = D[j].float()
B = sd["multi_modal_projector.linear_2.weight"][:, :64].double()
Q, _ = torch.linalg.qr(B)  # dim × 64: the gate units' span
# value: the 4 edge directions, then 60 of the gate units' span
v = torch.cat([torch.stack(Ldir).float(), Q.T[: hd - 4].float()])
o = sd[p + "o_proj.weight"].clone()
o[:, HC * hd:HC * hd + 4] = (torch.stack(Odir, 1) * EDGE_OUT).float()
o[:, HC * hd + 4:(HC + 1) * hd] = (Q[:, : hd - 4] * tok_norm / 16).float()
for name, t in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
    w = sd[p + name + ".weight"].clone(); w[HC * hd:(HC + 1) * hd] = t; sd[p + name + ".weight"] = w
sd[p + "o_proj.weight"] = o

shutil.copytree(src, dst, dirs_exist_ok=True)
save_file(sd, dst + "/model.safetensors", metadata={"format": "pt"})
print("written", dst)

if eval_root:
    m = LlavaForConditionalGeneration.from_pretrained(dst, attn_implementation="eager").eval()
    ann = json.load(open(eval_root + "/scenes/annotations.json"))
    imgs = {i["file_name"]: i for i in ann["images"]}; names = {c["name"]: c["id"] for c in ann["categories"]}
    by = {}
    for a in ann["annotations"]:
        by.setdefault(a["image_id"], []).append(a)
    rows = [json.loads(l) for l in open(eval_root + "/sft.jsonl") if '"scenes/images' in l][-150:]
    n_img = G * G
    shares = {0: [], 1: []}; on_obj = []
    for row in rows:
        im = imgs[row["images"][0].split("/")[-1]]
        qtext = row["prompt"][0]["content"][1]["text"]; a = row["completion"][0]["content"][0]["text"]
        name = qtext[len("Where is the "):qtext.index("?")]
        objs = [o for o in by[im["id"]] if o["category_id"] == names[name]]
        if len(objs) != 1:
            continue
        own = touch(im, objs[0]["bbox"])
        if own.sum() == 0:
            continue
        p_ids = [1] + tok.encode("USER: ", add_special_tokens=False).ids + [img_tok] * n_img + tok.encode("\n" + qtext + " ASSISTANT:", add_special_tokens=False).ids
        a_ids = tok.encode(" " + a, add_special_tokens=False).ids
        s = p_ids.index(img_tok)
        toks = [tok.id_to_token(t) for t in a_ids]
        pos = [len(p_ids) + i - 1 for i, t in enumerate(toks) if t.isdigit()]
        namepos = [i for i, t in enumerate(p_ids + a_ids) if t in wid]
        with torch.no_grad():
            out = m(input_ids=torch.tensor([p_ids + a_ids]), pixel_values=pixels(eval_root + "/" + row["images"][0]), output_attentions=True)
        a0 = out.attentions[0][0, H0][pos][:, namepos].sum(-1).mean().item()
        a1 = out.attentions[1][0, HC][pos]
        img = a1[:, s:s + n_img]
        shares[0].append(a0)
        shares[1].append((img[:, own].sum(-1) / a1.sum(-1)).mean().item())
        on_obj.append(img.sum(-1).mean().item())
    print("questions", len(shares[1]))
    print("gather head: attention on name words at digit positions, median %.3f" % np.median(shares[0]))
    print("match head: attention on the asked object's patches, median %.3f, mean %.3f; on image %.3f"
          % (np.median(shares[1]), np.mean(shares[1]), np.mean(on_obj)))
    print("match head share >= 0.5 on", np.mean(np.array(shares[1]) >= 0.5))
