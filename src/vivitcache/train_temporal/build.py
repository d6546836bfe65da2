"""The stage-2 model: built without its spatial ViT, started from a stage-1 run (or at random), parts frozen.

`--init RUN1` takes the adapter, temporal transformer and head of a stage-1 run (any subset, `--init-parts`), with
the stage-1 architecture; the temporal position embeddings are then interpolated from the stage-1 clip length to
`--frames` (linear, end points aligned, CLS position kept: `models.temporal.interpolate_temporal_pos_embed`).

Before anything trains, the store must have been extracted with that run's spatial model: same model name and same
weights sha256 (`FingerprintMismatchError` otherwise). Taking the head also needs the same classes (`InitError`).
"""

from __future__ import annotations

import dataclasses

from vivitcache.config import ModelConfig
from vivitcache.errors import UserError
from vivitcache.models.spatial import SpatialModelError, resolve_model_name
from vivitcache.models.tokens import ALL_TOKENS, default_frame_token, token_info
from vivitcache.models.vivit import ViViT, build_vivit
from vivitcache.runs import Stage1Run, load_stage1
from vivitcache.store import FingerprintMismatchError, TokenStore
from vivitcache.store.fingerprint import fingerprint_diff
from vivitcache.train_temporal.config import TrainConfig


class InitError(UserError, ValueError):
    """A stage-1 run that cannot initialise the stage-2 model asked for (other classes, other token width)."""


def build_token_model(cfg: ModelConfig, spatial_dim: int) -> ViViT:
    """A stage-2 model (no spatial model; it takes frame features [B, T, Din]) for tokens of width `spatial_dim`,
    random init under torch's current seed."""
    return build_vivit(cfg, with_spatial=False, spatial_dim=spatial_dim)


def _model_name(name) -> str | None:
    try:
        return resolve_model_name(name) if isinstance(name, str) else name
    except SpatialModelError:
        return name  # compared as written


def check_store_matches_stage1(store: TokenStore, stage1: Stage1Run) -> None:
    """FingerprintMismatchError unless the store's tokens come from stage-1 run's spatial model (name and weights)."""
    expected = {"model": _model_name(stage1.model.spatial), "weights_sha256": stage1.spatial_sha256}
    actual = {"model": _model_name(store.fingerprint.get("model")), "weights_sha256": store.fingerprint.get("weights_sha256")}
    diff = fingerprint_diff(expected, actual)
    if diff:
        raise FingerprintMismatchError(
            diff, f"store {store.path} was not extracted with the spatial model of stage-1 run {stage1.path} "
            "(re-extract with `vivitcache extract --checkpoint` of that run, or use --init none)",
            "stage-1 run has", "store has",
        )


def check_stores_agree(store: TokenStore, other: TokenStore) -> None:
    """FingerprintMismatchError unless two stores hold tokens of the same kind (fingerprint, layout, classes)."""
    a = {"fingerprint": store.fingerprint, "classes": store.classes, "tokens": store.layout.tokens,
         "dim": store.layout.dim}
    b = {"fingerprint": other.fingerprint, "classes": other.classes, "tokens": other.layout.tokens,
         "dim": other.layout.dim}
    diff = fingerprint_diff(a, b)
    if diff:
        raise FingerprintMismatchError(diff, f"stores {store.path} and {other.path} differ", "first has", "second has")


def _attn_fields(cfg: TrainConfig, store: TokenStore, post: str) -> dict:
    """The ModelConfig fields of an `attn` adapter over the store's tokens, then the one-token adapter `post`."""
    layout = store.layout
    if layout.tokens_per_frame < 2 or layout.tokens == "all":
        raise InitError(f"--adapter attn: store {store.path} holds {layout.tokens} tokens ({layout.tokens_per_frame} per "
                        "frame); extract one with --tokens grid (and/or --layers -1,-4,-7,-10)")
    return dict(adapter="attn", attn_post=post, attn_query=cfg.model.attn_query, frame_token=ALL_TOKENS,
                tokens_per_frame=layout.tokens_per_frame, token_layers=len(layout.layers))


def _load_part(model: ViViT, part: str, stage1: Stage1Run) -> None:
    # an attn adapter's one-token adapter (`post`) is the stage-1 run's adapter
    target = model.adapter.post if part == "adapter" and model.cfg.adapter == "attn" else getattr(model, part)
    try:
        target.load_state_dict(stage1.part(part))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise InitError(f"{stage1.path}: its {part} does not fit the stage-2 model ({first})") from None


def build_stage2_model(cfg: TrainConfig, store: TokenStore, stage1: Stage1Run | None = None) -> tuple[ViViT, dict]:
    """The stage-2 model for `cfg` on `store`, and what it was made from: {init, init_parts, spatial_sha256}.
    `stage1`: the run `cfg.init` names, when the caller has loaded it already (a sweep loads each run once).

    Call under a fixed seed: parts not taken from the stage-1 run are initialised at random.
    """
    classes, dim = store.classes, store.layout.dim
    adapter = "none" if cfg.no_adapter else None
    attn = cfg.model.adapter == "attn"
    if cfg.init is None:
        # the frame feature the store holds (pooled, cls, …; cls+mean from `all`), unless one is asked for
        frame_token = cfg.frame_token or default_frame_token(store.layout.tokens, token_info(store.fingerprint)[1])
        one_token = {"adapter": adapter or cfg.model.adapter, "frame_token": frame_token}
        model_cfg = dataclasses.replace(
            cfg.model, spatial=store.fingerprint.get("model", cfg.model.spatial), num_frames=cfg.frames,
            num_classes=len(classes), **(_attn_fields(cfg, store, adapter or cfg.model.attn_post) if attn else one_token),
        )
        model = build_token_model(model_cfg, dim)
        made = {"init": None, "init_parts": [], "spatial_sha256": store.fingerprint.get("weights_sha256")}
    else:
        stage1 = stage1 or load_stage1(cfg.init)
        check_store_matches_stage1(store, stage1)
        parts = [p for p in cfg.init_parts if not (p == "adapter" and cfg.no_adapter)]
        if "head" in parts and list(stage1.classes) != list(classes):
            raise InitError(
                f"stage-1 run {cfg.init} has {len(stage1.classes)} classes {stage1.classes[:4]}…, store {store.path} "
                f"has {len(classes)} {classes[:4]}…: its head cannot be used (leave head out of --init-parts)"
            )
        first = "pooled" if store.layout.tokens == "grid" else store.layout.tokens.split("+")[0]
        if attn and stage1.model.frame_token != first:
            raise InitError(f"--adapter attn starts from the store's first token ({first}), stage-1 run {cfg.init} "
                            f"reads {stage1.model.frame_token}: use --init none, or a run with frame token {first}")
        # built at the stage-1 clip length so the saved position embeddings load as they are, then resized
        own = _attn_fields(cfg, store, adapter or stage1.model.adapter) if attn else {
            "adapter": adapter or stage1.model.adapter}
        model_cfg = dataclasses.replace(
            stage1.model, num_classes=len(classes), drop_rate=cfg.model.drop_rate,
            drop_path_rate=cfg.model.drop_path_rate, **own,
        )
        model = build_token_model(model_cfg, dim)
        for part in parts:
            _load_part(model, part, stage1)
        model.resize_frames(cfg.frames)
        made = {"init": str(stage1.path), "init_parts": parts, "spatial_sha256": stage1.spatial_sha256,
                "init_frames": stage1.model.num_frames}
    if cfg.freeze_temporal:
        model.temporal.requires_grad_(False)
    return model, made
