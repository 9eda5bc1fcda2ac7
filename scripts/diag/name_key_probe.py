"""Probe (not yet in the workbench): give every object patch's image token the
language model's input embeddings of its category's colour and shape words,
so that a head can match the question's name against the image by
embedding. Twelve projector units (above the gate's first 64, those with the
smallest outgoing weights) become category indicators: the frozen tower's
least-squares category read-out on a scene project's patches, gated like
`spr tiny gate`; their outgoing weights write alpha × the mean image-token
norm along (E[colour] + E[shape]) / |·|.

Usage (torch + transformers):
  python scripts/diag/name_key_probe.py MODEL_DIR OUT_DIR TINY_DATA_DIR SCENES ALPHA
README "The experiment", try 15.
"""
import json, sys, shutil, numpy as np, torch
from transformers import LlavaForConditionalGeneration
from safetensors.torch import load_file, save_file
from PIL import Image
from tokenizers import Tokenizer
src, dst, root, n_sc, alpha = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
m = LlavaForConditionalGeneration.from_pretrained(src).eval()
tok = Tokenizer.from_file(src + "/tokenizer.json")
vc = m.config.vision_config; G = vc.image_size // vc.patch_size
mean=torch.tensor([0.48145466,0.4578275,0.40821073])[:,None,None]; std=torch.tensor([0.26862954,0.26130258,0.27577711])[:,None,None]
ann = json.load(open(root + "/scenes/annotations.json"))
cats = {c["id"]: c["name"] for c in ann["categories"]}; cid = sorted(cats)
by = {}
for a in ann["annotations"]: by.setdefault(a["image_id"], []).append(a)
X, Y, T = [], [], []
tower = m.model.vision_tower if hasattr(m, "model") and hasattr(m.model, "vision_tower") else m.vision_tower
for im in ann["images"][:n_sc]:
    pil = Image.open(root + "/scenes/images/" + im["file_name"]).convert("RGB").resize((vc.image_size, vc.image_size), Image.BICUBIC)
    px = ((torch.tensor(np.asarray(pil)).permute(2,0,1).float()/255-mean)/std)[None]
    with torch.no_grad():
        h = tower(px, output_hidden_states=True).hidden_states[-2][0, 1:].numpy()
    lab = np.zeros(G*G, int)  # 0 background, else index+1; smallest object wins
    area = np.full(G*G, 1e18)
    for o in by.get(im["id"], []):
        x, y, w, hh = o["bbox"]
        for i in range(G):
            for j in range(G):
                cx = (j+.5)/G*im["width"]; cy = (i+.5)/G*im["height"]
                if x <= cx <= x+w and y <= cy <= y+hh and w*hh < area[i*G+j]:
                    area[i*G+j] = w*hh; lab[i*G+j] = cid.index(o["category_id"]) + 1
    X.append(h); Y.append(lab)
X = np.concatenate(X); Y = np.concatenate(Y)
Xb = np.hstack([X, np.ones((len(X), 1))])
Tg = np.stack([(Y == k+1).astype(float) for k in range(len(cid))], 1)
W = np.linalg.lstsq(Xb, Tg, rcond=None)[0]  # (129, 12)
P = Xb @ W
sd = load_file(src + "/model.safetensors")
w1 = sd["multi_modal_projector.linear_1.weight"].clone(); b1 = sd["multi_modal_projector.linear_1.bias"].clone()
w2 = sd["multi_modal_projector.linear_2.weight"].clone()
E = sd["language_model.model.embed_tokens.weight"]
# the 12 units whose outgoing weights are smallest
order = torch.argsort(w2.norm(dim=0)).tolist(); units = [u for u in order if u >= 64][:len(cid)]
with torch.no_grad():
    feats = m.get_image_features(pixel_values=px, vision_feature_layer=-2, vision_feature_select_strategy="default")
    if hasattr(feats, "pooler_output") and feats.pooler_output is not None: feats = feats.pooler_output
    elif hasattr(feats, "last_hidden_state"): feats = feats.last_hidden_state
    feats = feats[0] if isinstance(feats, (list, tuple)) else feats
tok_norm = float(feats.reshape(-1, feats.shape[-1]).norm(dim=-1).mean())
acc = []
for k, c in enumerate(cid):
    own = Y == k+1; on = P[own, k]; off = P[~own, k]
    t = (np.quantile(off, 0.99) + np.quantile(on, 0.10)) / 2
    gain = 8.0 / max(on.mean() - t, 1e-3)
    acc.append(((P[:, k] > t) == own).mean())
    u = units[k]
    w1[u] = torch.tensor(gain * W[:128, k], dtype=w1.dtype); b1[u] = float(gain * (W[128, k] - t))
    colour, shape = cats[c].split()
    e = E[tok.token_to_id("▁" + colour)] + E[tok.token_to_id("▁" + shape)]
    w2[:, u] = alpha * tok_norm * e / e.norm() / 8.0   # gelu(≈8) on the object's patches
sd["multi_modal_projector.linear_1.weight"] = w1; sd["multi_modal_projector.linear_1.bias"] = b1
sd["multi_modal_projector.linear_2.weight"] = w2
shutil.copytree(src, dst, dirs_exist_ok=True)
save_file(sd, dst + "/model.safetensors", metadata={"format": "pt"})
print(f"patches {len(Y)}, objects {(Y>0).sum()}, image-token norm {tok_norm:.2f}, units {units}")
print("per-category indicator accuracy", np.round(acc, 3))
