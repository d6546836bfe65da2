"""Where the spatial ViT, its preprocessing and the frame sampling come from, and the store fingerprint they make.

Sources, in this order: a stage-1 run (`--checkpoint`: weights, preprocessing and sampling of the run), image-model
weights (`--weights FILE|DIR`, or `--pretrained` from the Hugging Face cache), or a random init under `--seed` (tests,
demos). `models.SpatialSpec` is the picklable recipe every Dask worker rebuilds the model from (the same one predict
and bench use); `weights_sha256` is checked after every build, so a worker can
never extract with other weights than the fingerprint names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vivitcache.data.decode import ORIENTATION
from vivitcache.data.transforms import Preprocess
from vivitcache.extract.config import ExtractConfig, ExtractConfigError
from vivitcache.hashing import state_dict_sha256
from vivitcache.models.spatial import SpatialModelError, SpatialSpec, resolve_model_name
from vivitcache.models.tokens import canonical_layers, check_token_kind, has_class_token, token_map, tokens_per_frame
from vivitcache.store import StoreLayout
from vivitcache.store.layout import SCHEMA


@dataclass
class ExtractSource:
    """Everything resolved from an `ExtractConfig` before any video is touched."""

    spec: SpatialSpec
    """Recipe of the spatial model, with its weights sha256 filled in."""
    preprocess: Preprocess
    """Frame preprocessing (resize short side, center crop, normalise)."""
    fps: float | None
    """Frame sampling by rate (None: not by rate)."""
    stride: int | None
    """Frame sampling by stride (None: not by stride)."""
    fingerprint: dict
    """The store fingerprint (root attributes) these settings make."""
    layout: StoreLayout
    """Token layout of the store (kind, K, D, dtype, shards, chunks)."""


def _square(value) -> int | list[int]:
    """timm keeps sizes as (h, w) tuples; record an int when square."""
    if isinstance(value, (tuple, list)):
        return int(value[0]) if len(set(value)) == 1 else [int(v) for v in value]
    return int(value)


def build_fingerprint(
    spatial: nn.Module, name: str, weights_sha256: str, preprocess: Preprocess, fps, stride, tokens: str, dtype: str,
    decoder: str, grid: int = 0, layers=(-1,),
) -> dict:
    """The content keys that make two stores interchangeable: same model, weights, pixels, sampling, tokens, dtype.

    The vivitcache version is deliberately NOT part of it (StoreWriter records it in the root attributes and each
    commit record): a resume with a newer vivitcache whose content keys are equal writes the same tokens and is
    allowed. A change that alters the tokens must change one of these keys (or `schema`). `grid` and `layers` are
    keys only when set, so one-token stores keep their fingerprints.
    """
    extra = ({"grid": grid} if grid else {}) | ({"layers": list(layers)} if tuple(layers) != (-1,) else {})
    return extra | {
        "model": name,
        "img_size": _square(spatial.patch_embed.img_size),
        "patch_size": _square(spatial.patch_embed.patch_size),
        "depth": len(spatial.blocks),
        "embed_dim": int(spatial.embed_dim),
        "num_prefix_tokens": int(spatial.num_prefix_tokens),
        "class_token": has_class_token(spatial),
        "global_pool": str(getattr(spatial, "global_pool", "")),
        "weights_sha256": weights_sha256,
        "preprocess": preprocess.to_dict(),
        "sampling": {"fps": None if fps is None else float(fps), "stride": None if stride is None else int(stride)},
        "orientation": ORIENTATION,  # rotated videos are decoded as displayed
        "decoder": decoder,  # pyav and torchcodec resize differently (bicubic vs bilinear): other pixels
        "tokens": tokens,
        "dtype": dtype,
        "schema": SCHEMA,
    }


def resolve_source(cfg: ExtractConfig) -> tuple[ExtractSource, nn.Module]:
    """(resolved settings, the built spatial model) from a config; the model is built once here to hash it."""
    run = None
    model_name, img_size, patch_size, depth = cfg.model, cfg.img_size, cfg.patch_size, cfg.spatial_depth
    fps, stride = cfg.fps, cfg.stride
    if cfg.checkpoint:
        from vivitcache.runs import load_stage1

        run = load_stage1(cfg.checkpoint)
        m = run.model
        for what, asked, have in (("--model", model_name, m.spatial), ("img_size", img_size, m.img_size),
                                  ("patch_size", patch_size, m.patch_size), ("spatial_depth", depth, m.spatial_depth)):
            same = asked is None or (
                resolve_model_name(asked) == resolve_model_name(have) if what == "--model" else asked == have
            )
            if not same:
                raise ExtractConfigError(
                    f"extract: {what}={asked!r} contradicts checkpoint {cfg.checkpoint} ({have!r})"
                )
        model_name, img_size, patch_size, depth = m.spatial, m.img_size, m.patch_size, m.spatial_depth
        if fps is None and stride is None:  # the sampling the spatial model was trained with
            fps, stride = run.fps, run.stride
    spec = SpatialSpec(
        name=resolve_model_name(model_name), img_size=img_size, patch_size=patch_size, depth=depth,
        weights=str(cfg.weights) if cfg.weights else None, pretrained=cfg.pretrained,
        checkpoint=str(cfg.checkpoint) if cfg.checkpoint else None, seed=cfg.seed,
    )
    spatial_part = run.part("spatial") if run is not None else None
    model = spec.build(spatial_part)  # the run loaded above, not read again
    tokens = cfg.tokens or (run.model.frame_token if run is not None else "pooled")
    check_token_kind(model, tokens)
    grid = (cfg.grid or 4) if tokens == "grid" else 0
    layers = canonical_layers(model, cfg.layers)
    k = tokens_per_frame(model, tokens, grid, layers)  # also checks the grid fits the model's patch grid
    if run is None:
        sha = state_dict_sha256(model)
    else:  # its hash is the run's when the model holds exactly the run's tensors (compared, not hashed twice)
        built = model.state_dict()
        if built.keys() != spatial_part.keys() or not all(torch.equal(built[k], spatial_part[k]) for k in built):
            raise SpatialModelError(f"{cfg.checkpoint}: rebuilt spatial model differs from its checkpoint part")
        sha = run.spatial_sha256
    spec = SpatialSpec(**{**spec.__dict__, "weights_sha256": sha})
    preprocess = Preprocess.from_dict(run.preprocess) if run is not None else Preprocess.from_timm(model, img_size)
    fingerprint = build_fingerprint(model, spec.name, sha, preprocess, fps, stride, tokens, cfg.dtype, cfg.decoder,
                                    grid, layers)
    layout = StoreLayout(
        tokens=tokens, tokens_per_frame=k, dim=int(model.embed_dim),
        dtype=cfg.dtype, shard_frames=cfg.shard_frames, chunk_frames=cfg.chunk_frames_for_layout(),
        compression=cfg.compression, grid=grid, layers=layers, token_map=token_map(tokens, grid, layers),
    )
    return ExtractSource(spec, preprocess, fps, stride, fingerprint, layout), model
