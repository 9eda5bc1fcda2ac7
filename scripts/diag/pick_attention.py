"""Where the language model looks when it writes a box: for whole-scene REC
rows of a `spr tiny data` folder whose asked category occurs once, the share
of each layer's and head's image attention (at the positions that predict
the box's digits) on the asked object's patches and on the other objects'.
A head that picks by name puts much more per patch on the asked object.

Usage (torch + transformers, e.g. shared/bench/trl/requirements.txt):
  python scripts/diag/pick_attention.py MODEL_DIR TINY_DATA_DIR
A patch belongs to an object when its centre lies in the object's box.
"""
import json
import sys

import numpy as np
import torch
from transformers import LlavaForConditionalGeneration
from PIL import Image
from tokenizers import Tokenizer
model, root = sys.argv[1], sys.argv[2]
m = LlavaForConditionalGeneration.from_pretrained(model, attn_implementation="eager").eval()
tok = Tokenizer.from_file(model + "/tokenizer.json")
vc = m.config.vision_config; G = vc.image_size // vc.patch_size; n_img = G * G
mean=torch.tensor([0.48145466,0.4578275,0.40821073])[:,None,None]; std=torch.tensor([0.26862954,0.26130258,0.27577711])[:,None,None]
ann = json.load(open(root + "/scenes/annotations.json"))
imgs = {i["file_name"]: i for i in ann["images"]}; cats = {c["name"]: c["id"] for c in ann["categories"]}
by_img = {}
for a in ann["annotations"]: by_img.setdefault(a["image_id"], []).append(a)
def cover(im, box):
    x, y, w, h = box; m_ = np.zeros((G, G), bool)
    for i in range(G):
        for j in range(G):
            cx = (j + .5) / G * im["width"]; cy = (i + .5) / G * im["height"]
            m_[i, j] = x <= cx <= x + w and y <= cy <= y + h
    return m_.reshape(-1)
rows = [json.loads(l) for l in open(root + "/sft.jsonl") if '"scenes/images' in l][-200:]
img_id = m.config.image_token_index
L = m.config.text_config.num_hidden_layers; H = m.config.text_config.num_attention_heads
mass = np.zeros((L, H)); n = 0; fo=[]; ff=[]; cnt=[]
for r in rows:
    fn = r["images"][0].split("/")[-1]; im = imgs[fn]
    q = r["prompt"][0]["content"][1]["text"]; a = r["completion"][0]["content"][0]["text"]
    name = q[len("Where is the "):q.index("?")]
    objs = [o for o in by_img[im["id"]] if o["category_id"] == cats[name]]
    if len(objs) != 1: continue
    own = cover(im, objs[0]["bbox"])
    other = np.zeros(n_img, bool)
    for o in by_img[im["id"]]:
        if o is not objs[0]: other |= cover(im, o["bbox"])
    other &= ~own
    if own.sum() == 0 or other.sum() == 0: continue
    pil = Image.open(root + "/" + r["images"][0]).convert("RGB").resize((vc.image_size, vc.image_size), Image.BICUBIC)
    px = ((torch.tensor(np.asarray(pil)).permute(2,0,1).float()/255-mean)/std)[None]
    p_ids = [1] + tok.encode("USER: ", add_special_tokens=False).ids + [img_id]*n_img + tok.encode("\n" + q + " ASSISTANT:", add_special_tokens=False).ids
    a_ids = tok.encode(" " + a, add_special_tokens=False).ids
    ids = torch.tensor([p_ids + a_ids])
    s = p_ids.index(img_id)
    # positions whose next token is a digit inside the box
    toks = [tok.id_to_token(t) for t in a_ids]
    pos = [len(p_ids) + k - 1 for k, t in enumerate(toks) if t.isdigit()]
    with torch.no_grad():
        o = m(input_ids=ids, pixel_values=px, output_attentions=True)
    for li, at in enumerate(o.attentions):
        A = at[0][:, pos, s:s+n_img].mean(1).numpy()  # H × n_img
        mass[li] += A.sum(-1)
        fo.append((li, A[:, own].sum(-1) / A.sum(-1))); ff.append((li, A[:, other].sum(-1) / A.sum(-1)))
    n += 1
    cnt.append((own.sum(), other.sum()))
print("questions", n, "; median patches of the asked object", np.median([c[0] for c in cnt]), "of the other objects", np.median([c[1] for c in cnt]))
print("image attention mass per layer × head:\n", (mass / n).round(3))
for li in range(L):
    a=np.median([x for l,x in fo if l==li],0); b=np.median([x for l,x in ff if l==li],0)
    print("layer",li,"median share of image attention on asked object",a.round(3),"on other objects",b.round(3))
