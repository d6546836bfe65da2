"""Run once at main's HEAD (e3b2fed): fingerprints and layouts of one-token stores, for tests/test_tokens.py."""
import json, sys, timm
from vivitcache.data.transforms import Preprocess
from vivitcache.extract.source import build_fingerprint
from vivitcache.models.tokens import tokens_per_frame
from vivitcache.store import StoreLayout
FAMILIES = [
    ("vit_tiny_patch16_224.augreg_in21k_ft_in1k", dict(img_size=32, patch_size=8, depth=1)),
    ("vit_base_patch16_siglip_224.webli", dict(img_size=32, patch_size=8, depth=1)),
    ("eva02_tiny_patch14_224.mim_in22k", dict(img_size=56, patch_size=14, depth=1)),
]
out = []
for name, ov in FAMILIES:
    m = timm.create_model(name, pretrained=False, num_classes=0, **ov)
    for kind in ("pooled", "cls", "pooled+mean", "cls+mean", "all"):
        if kind.startswith("cls") and m.cls_token is None:
            continue
        pre = Preprocess.from_timm(m, ov["img_size"])
        fp = build_fingerprint(m, name, "0" * 64, pre, None, 2, kind, "fp16", "pyav")
        lay = StoreLayout(tokens=kind, tokens_per_frame=tokens_per_frame(m, kind), dim=int(m.embed_dim), dtype="fp16",
                          shard_frames=256, chunk_frames=16 if kind == "all" else 64)
        out.append({"model": name, "overrides": ov, "tokens": kind, "fingerprint": fp, "layout": lay.to_dict()})
json.dump({"made_at": sys.argv[1], "stores": out}, open(sys.argv[2], "w"), indent=1, sort_keys=True)
# the whole extract path (resolve_source + storage_layout); weights_sha256 blanked (a random init's bits are the CPU's)
from vivitcache.extract import ExtractConfig
from vivitcache.extract.source import resolve_source
from vivitcache.extract.runner import storage_layout
from dataclasses import replace
data = json.load(open(sys.argv[2]))
resolved = []
for name, ov in FAMILIES:
    for kind in (None, "pooled", "all"):
        cfg = ExtractConfig(data="x.csv", store="s.zarr", model=name, img_size=ov["img_size"], patch_size=ov["patch_size"],
                            spatial_depth=ov["depth"], tokens=kind)
        source, _ = resolve_source(replace(cfg, shard_frames=cfg.shard_frames or cfg.chunk_frames_for_layout()))
        layout = storage_layout(cfg, source.layout)
        fp = dict(source.fingerprint, weights_sha256="<blanked>")
        resolved.append({"model": name, "overrides": ov, "tokens": kind, "fingerprint": fp, "layout": layout.to_dict()})
data["resolved"] = resolved
json.dump(data, open(sys.argv[2], "w"), indent=1, sort_keys=True)
