"""`vivitcache predict`: top-k labels for one video from a stage-2 run.

Two ways to get the frame features, which must agree:
- from a token store, when the video is in it (matched by id or by source path): no pixel is decoded;
- on the fly: the video is decoded and sampled exactly as `extract` would (the store fingerprint's preprocessing
  and sampling), the frozen spatial ViT of the stage-1 run runs on the frames the views need, and its tokens are
  rounded through the store dtype, so both paths see the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vivitcache.config import PredictConfig
from vivitcache.data.decode import read_frames, frame_times, sample_times
from vivitcache.data.sampling import view_indices
from vivitcache.data.transforms import Preprocess
from vivitcache.errors import ConfigError
from vivitcache.models.spatial import WEIGHT_FILES, SpatialSpec
from vivitcache.models.tokens import frame_features, frame_tokens, token_info
from vivitcache.runs import RunRecord
from vivitcache.store import FingerprintMismatchError, TokenStore
from vivitcache.store.fingerprint import fingerprint_diff
from vivitcache.store.dtypes import decode_tokens, encode_tokens
from vivitcache.train_temporal.build import build_token_model
from vivitcache.training.checkpoint import CheckpointError, load_model_state


@dataclass
class Prediction:
    """Top-k classes of one video."""

    video: str
    """The video path (or store id) predicted."""
    source: str
    """Where the frame features came from: `store` or `on-the-fly`."""
    top: list[tuple[str, float]]
    """(class name, probability) pairs, most likely first."""
    probs: np.ndarray
    """Probabilities over all classes, averaged over views."""


def _stage2(checkpoint: str | Path) -> tuple[RunRecord, torch.nn.Module]:
    record = RunRecord.load(checkpoint, 2)
    model = build_token_model(record.model, record.stage2.store_layout["dim"])
    model.load_state_dict(load_model_state(checkpoint))
    return record, model.eval()


def _find_in_store(store: TokenStore, video: str, video_id: str | None) -> str | None:
    if video_id is not None:
        return video_id if video_id in store else None
    target = str(Path(video).resolve())
    for vid in store.ids():
        if str(Path(store.source(vid)).resolve()) == target:
            return vid
    return None


def _spatial_spec(record: RunRecord, spatial: str | None, store_provenance: dict | None) -> SpatialSpec:
    """Recipe of the spatial ViT that made the store: --spatial, else the stage-1 run of --init, else the store's."""
    fp = record.stage2.store_fingerprint
    common = dict(name=fp["model"], img_size=fp["img_size"], patch_size=fp["patch_size"], depth=fp["depth"],
                  weights_sha256=record.stage2.spatial_sha256)
    if spatial is not None:
        # a stage-1 run folder, else weights: a file, or a model folder (which holds its weights file at the top)
        is_run = Path(spatial).is_dir() and not any((Path(spatial) / f).is_file() for f in WEIGHT_FILES)
        return SpatialSpec(weights=None if is_run else spatial, checkpoint=spatial if is_run else None, seed=0, **common)
    if record.stage2.init:
        return SpatialSpec(weights=None, checkpoint=record.stage2.init, seed=0, **common)
    made = (store_provenance or {}).get("extract_config")
    if made:
        return SpatialSpec(weights=made.get("weights"), pretrained=made.get("pretrained", False),
                           checkpoint=made.get("checkpoint"), seed=made.get("seed", 0), **common)
    raise CheckpointError(
        "cannot tell which spatial ViT made the tokens: pass --spatial (a stage-1 run or weights file) or --store"
    )


@torch.inference_mode()
def _features_on_the_fly(video: str, record: RunRecord, spec: SpatialSpec, views: int) -> torch.Tensor:
    """Decode the frames the views need, run the spatial ViT, round through the store dtype: [V, T, Din]."""
    fp, layout = record.stage2.store_fingerprint, record.stage2.store_layout
    if fp.get("decoder", "pyav") != "pyav":  # torchcodec resizes bilinear: other pixels than PyAV gives here
        raise ConfigError(f"the run's tokens were decoded with {fp['decoder']}; on-the-fly predict decodes with PyAV "
                          "and would see other pixels: pass --store with the video's tokens")
    preprocess = Preprocess.from_dict(fp["preprocess"])
    fps, stride = fp["sampling"]["fps"], fp["sampling"]["stride"]
    n = len(sample_times(frame_times(video), fps=fps, stride=stride))
    idx = view_indices(n, record.model.num_frames, views)  # [V, T]
    unique, inverse = np.unique(idx, return_inverse=True)
    pixels = read_frames(video, unique, fps, stride, preprocess.resize_short, preprocess.interpolation)  # [U, h, w, 3]
    spatial = spec.build()
    kind = layout["tokens"]  # the store's own kind, so the rule below is the one the trainer applied
    grid, layers = layout.get("grid", 0), tuple(layout.get("layers", (-1,)))  # set in grid / several-block stores
    tokens = frame_tokens(spatial, preprocess(pixels), kind, grid, layers)  # [U, K, D]
    tokens = torch.from_numpy(decode_tokens(encode_tokens(tokens.float().numpy(), layout["dtype"]), layout["dtype"]))
    feats = frame_features(tokens.float(), kind, record.model.frame_token, *token_info(fp))  # [U, Din]
    return feats[torch.from_numpy(inverse.reshape(idx.shape))]  # [V, T, Din]


def _features_from_store(store: TokenStore, vid: str, record: RunRecord, views: int) -> torch.Tensor:
    """Frame features of the views from cached tokens: [V, T, Din]."""
    idx = view_indices(store.num_frames(vid), record.model.num_frames, views)  # [V, T]
    tokens = torch.from_numpy(store.clip(vid, idx.reshape(-1)).astype(np.float32))  # [V·T, K, D]
    feats = frame_features(tokens, store.layout.tokens, record.model.frame_token, *token_info(store.fingerprint))  # [V·T, Din]
    return feats.view(*idx.shape, -1)  # [V, T, Din]


def predict(
    video: str,
    checkpoint: str | Path,
    store: str | Path | None = None,
    video_id: str | None = None,
    views: int | None = None,
    top: int = PredictConfig.top,
    spatial: str | None = None,
) -> Prediction:
    """Top-`top` classes of `video` with probabilities (softmax averaged over `views` fixed temporal views)."""
    record, model = _stage2(checkpoint)
    views = views or record.settings["run"]["eval_views"]
    tokens_store = TokenStore.open(store) if store is not None else None
    if tokens_store is not None:
        diff = fingerprint_diff(record.stage2.store_fingerprint, tokens_store.fingerprint)
        if diff:
            raise FingerprintMismatchError(diff, f"store {store} holds other tokens than run {checkpoint} was trained on",
                                           "run has", "store has")
    vid = _find_in_store(tokens_store, video, video_id) if tokens_store is not None else None
    if vid is not None:
        feats, source = _features_from_store(tokens_store, vid, record, views), "store"
    else:
        if not Path(video).is_file():
            raise ConfigError(f"{video}: no such video" + (f" and no id {video_id!r} in {store}" if video_id else ""))
        spec = _spatial_spec(record, spatial, tokens_store.provenance if tokens_store is not None else None)
        feats, source = _features_on_the_fly(video, record, spec, views), "on-the-fly"
    with torch.inference_mode():
        probs = model(feats).float().softmax(-1).mean(0).numpy()  # [classes]
    order = np.argsort(-probs)[:top]
    classes = record.classes
    return Prediction(video=vid or video, source=source, top=[(classes[i], float(probs[i])) for i in order], probs=probs)
