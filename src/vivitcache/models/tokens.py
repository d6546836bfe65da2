"""Token kinds, and the one rule "stored tokens → frame feature" that extract, stage 1, stage 2, predict and bench use.

What a store keeps per frame (`extract --tokens`, the store's `layout.tokens`; names in `store.layout.TOKEN_KINDS`):

| kind | K | what |
|---|---|---|
| `pooled` (default) | 1 | the model's own image embedding, `forward_head(forward_features(x), pre_logits=True)`: class token, average, attention pool (MAP), fc_norm, DeiT's class/distillation average: whatever timm does for that model |
| `cls` | 1 | the class token after the final norm (models with a class token only) |
| `pooled+mean`, `cls+mean` | 2 | that embedding, then the mean patch token |
| `all` | P + L | `forward_features` as it is: P prefix tokens (class, registers, distillation) then L patch tokens |
| `grid` (`--grid N`) | 1 + N² | the `pooled` embedding, then the patch tokens average-pooled (`adaptive_avg_pool2d`) to N x N cells, row by row |

`--layers -1,-4,…` stores the same tokens from several blocks, deepest first (K = blocks x tokens per block): each
block's tokens come from timm's `forward_intermediates(norm=True)` (the model's final norm applied to that block's
output) through the same per-block rule, `pooled` through the model's own head (`forward_head(pre_logits=True)`).
The last block (-1) is always stored first, so a store's first token is its one-token feature whatever the kind.
The default `-1` runs `forward_features` as before: one-block stores are unchanged. `token_map` names every token
(block, name), and is what the store's layout records. A grid needs at least N x N patches; a non-square patch grid
is pooled to N x N all the same (cells then cover rectangles of patches).

What the temporal stage sees per frame (`ModelConfig.frame_token`): `pooled`, `cls`, `pooled+mean` or `cls+mean`
(the latter two are [pooled or cls ‖ mean patch], width 2·D), or `tokens`: every stored token of the frame,
flattened to width K·D (so every reader keeps handling [n, Din]; the attentive adapter views it as [K, D]).
A one-token frame token on a store of several blocks or a grid reads the first (last-block) tokens. A frame token can be taken from any stored kind that
holds its pieces: `cls` and `cls+mean` also from `all` (class token = prefix 0, mean over the patch tokens); `pooled`
only from a store that kept it, since attention pooling needs the model's head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vivitcache.config import ALL_TOKENS
from vivitcache.errors import UserError

from vivitcache.store.layout import FRAME_TOKENS, TOKEN_KINDS


class TokenKindError(UserError, ValueError):
    """A token kind or frame token that does not exist, or that this model or store cannot give."""


def has_class_token(spatial: nn.Module) -> bool:
    """Whether a timm ViT-family model has a class token (SigLIP, gap and MAP models do not)."""
    return getattr(spatial, "cls_token", None) is not None


def check_token_kind(spatial: nn.Module, kind: str) -> None:
    """TokenKindError unless `spatial` can produce tokens of `kind`."""
    if kind not in TOKEN_KINDS:
        raise TokenKindError(f"unknown token kind {kind!r}: use one of {', '.join(TOKEN_KINDS)}")
    if kind.startswith("cls") and not has_class_token(spatial):
        pool = getattr(spatial, "global_pool", "?")
        raise TokenKindError(
            f"--tokens {kind}: {spatial.default_cfg.get('architecture', type(spatial).__name__)} has no class token "
            f"(it pools with {pool!r}); use pooled (its own image embedding) or pooled+mean"
        )


# ALL_TOKENS ("tokens"), the frame token of the attentive adapter: every stored token of a frame, flattened [K·D]


def canonical_layers(spatial: nn.Module, layers) -> tuple[int, ...]:
    """`--layers` as offsets from the last block, deepest first (-1, -4, …); TokenKindError if out of range,
    repeated, or without the last block (whose first token is the store's one-token feature)."""
    depth = len(spatial.blocks)
    if any(not -depth <= int(v) < depth for v in layers):
        raise TokenKindError(f"--layers {','.join(map(str, layers))}: the model has {depth} blocks (use -{depth}..-1)")
    offsets = [int(v) - depth if int(v) >= 0 else int(v) for v in layers]
    if len(set(offsets)) != len(offsets) or -1 not in offsets:
        raise TokenKindError(f"--layers {','.join(map(str, layers))}: give distinct blocks, the last one (-1) included")
    return tuple(sorted(offsets, reverse=True))


def check_grid(spatial: nn.Module, kind: str, grid: int) -> None:
    """TokenKindError unless `grid` fits the kind (N >= 1 for `grid`, else 0) and the model's patch grid (>= N x N)."""
    if (kind == "grid") != (grid > 0):
        raise TokenKindError(f"--grid {grid}: a grid size goes with --tokens grid only (and --tokens grid needs one)")
    if kind == "grid":
        h, w = spatial.patch_embed.grid_size
        if h < grid or w < grid:
            raise TokenKindError(f"--grid {grid}: the model's patch grid is {h}x{w}, smaller than {grid}x{grid}; "
                                 f"use --grid {min(h, w)} or less")


def _names(kind: str, grid: int) -> list[str]:
    """The tokens of one block, in stored order."""
    if kind == "grid":
        return ["pooled"] + [f"r{r}c{c}" for r in range(grid) for c in range(grid)]
    return kind.split("+")


def token_map(kind: str, grid: int = 0, layers=(-1,)) -> tuple[tuple[int, str], ...] | None:
    """(block, name) of every stored token, or None for a one-block store of a fixed kind (the layout then holds
    none, as before these kinds existed) and for `all`."""
    if kind == "all" or (kind != "grid" and tuple(layers) == (-1,)):
        return None
    return tuple((layer, name) for layer in layers for name in _names(kind, grid))


def tokens_per_frame(spatial: nn.Module, kind: str, grid: int = 0, layers=(-1,)) -> int:
    """K, the number of tokens stored per frame for a token kind, grid and blocks."""
    check_token_kind(spatial, kind)
    check_grid(spatial, kind, grid)
    if kind == "all":
        if tuple(layers) != (-1,):
            raise TokenKindError("--layers with --tokens all: store pooled or grid tokens of several blocks")
        return spatial.patch_embed.num_patches + spatial.num_prefix_tokens
    return len(_names(kind, grid)) * len(layers)


def _block_tokens(spatial: nn.Module, x: torch.Tensor, kind: str, grid: int) -> torch.Tensor:
    """One block's normed tokens x [N, P + L, D] → the kind's tokens [N, k, D]."""
    if kind == "all":
        return x  # [N, P + L, D]
    first, _, mean = kind.partition("+")
    if first in ("pooled", "grid"):
        head = spatial.forward_head(x, pre_logits=True)  # [N, D], the model's own pooling
    else:
        head = x[:, 0]  # [N, D], class token (check_token_kind refuses models without one)
    patches = x[:, spatial.num_prefix_tokens:]  # [N, L, D]
    if kind == "grid":
        h, w = spatial.patch_embed.grid_size
        cells = F.adaptive_avg_pool2d(patches.unflatten(1, (h, w)).permute(0, 3, 1, 2), grid)  # [N, D, N_g, N_g]
        return torch.cat([head[:, None], cells.flatten(2).transpose(1, 2)], dim=1)  # [N, 1 + N_g², D]
    if not mean:
        return head[:, None]  # [N, 1, D]
    return torch.stack([head, patches.mean(dim=1)], dim=1)  # [N, 2, D]


def frame_tokens(spatial: nn.Module, frames: torch.Tensor, kind: str, grid: int = 0, layers=(-1,)) -> torch.Tensor:
    """Per-frame tokens of the spatial model: frames [N, C, H, W] → [N, K, D] (K from `tokens_per_frame`)."""
    if tuple(layers) == (-1,):
        x = spatial.forward_features(frames)  # [N, P + L, D]: P prefix tokens, then patches; final norm applied
        return _block_tokens(spatial, x, kind, grid)
    prefix = spatial.num_prefix_tokens > 0  # timm pairs (patches, prefix) only for models that have prefix tokens
    outs = spatial.forward_intermediates(frames, indices=list(layers), norm=True, output_fmt="NLC",
                                         return_prefix_tokens=prefix, intermediates_only=True)  # ascending blocks
    blocks = [torch.cat([o[1], o[0]], dim=1) if prefix else o for o in outs]  # each [N, P + L, D]: prefix, patches
    return torch.cat([_block_tokens(spatial, x, kind, grid) for x in reversed(blocks)], dim=1)  # [N, K, D]


def _piece(tokens: torch.Tensor, stored_kind: str, piece: str, num_prefix_tokens: int, class_token: bool):
    """One piece (`pooled`, `cls` or `mean`) of the stored tokens [..., K, D] → [..., D]; None if not held."""
    if stored_kind == "grid":
        return tokens[..., 0, :] if piece == "pooled" else None  # [..., D]
    if stored_kind == "all":
        if piece == "mean":
            return tokens[..., num_prefix_tokens:, :].mean(dim=-2)  # [..., D]
        if piece == "cls" and class_token:
            return tokens[..., 0, :]  # [..., D]
        return None
    names = stored_kind.split("+")  # e.g. ["pooled", "mean"]
    return tokens[..., names.index(piece), :] if piece in names else None  # [..., D]


def frame_features(
    tokens: torch.Tensor, stored_kind: str, frame_token: str, num_prefix_tokens: int = 1, class_token: bool = True
) -> torch.Tensor:
    """The feature the temporal stage sees per frame: stored tokens [..., K, D] → [..., D] (or [..., 2D] for `+mean`).

    `stored_kind` is how the tokens were stored, `frame_token` what the model takes; `num_prefix_tokens` and
    `class_token` describe an `all` store's prefix (`token_info` reads them from a store fingerprint).
    """
    if frame_token == ALL_TOKENS:
        return tokens.flatten(-2)  # [..., K·D]
    if frame_token not in FRAME_TOKENS:
        raise TokenKindError(f"unknown frame token {frame_token!r}: use one of {', '.join(FRAME_TOKENS)}")
    pieces = [_piece(tokens, stored_kind, p, num_prefix_tokens, class_token) for p in frame_token.split("+")]
    if any(p is None for p in pieces):
        raise TokenKindError(
            f"frame token {frame_token} cannot be taken from tokens stored as {stored_kind!r}: "
            f"re-extract with --tokens {frame_token}"
            + ("" if frame_token.startswith("pooled") else " or --tokens all")
        )
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)  # [..., D] or [..., 2D]


def needs_arithmetic(stored_kind: str, frame_token: str) -> bool:
    """Whether the frame feature is computed (a mean over an `all` store's patches) rather than a stored value."""
    return stored_kind == "all" and frame_token.endswith("+mean")


def frame_feature_dim(spatial_dim: int, frame_token: str, tokens_per_frame: int = 1) -> int:
    """Width of the per-frame feature for a spatial width D (and K stored tokens, for `tokens`)."""
    if frame_token == ALL_TOKENS:
        return spatial_dim * tokens_per_frame
    return spatial_dim * len(frame_token.split("+"))


def default_frame_token(stored_kind: str, class_token: bool = True) -> str:
    """The frame token a model trained on a store takes when none is asked for: the stored one itself."""
    if stored_kind == "grid":
        return "pooled"
    if stored_kind != "all":
        return stored_kind
    if not class_token:
        raise TokenKindError("a model without a class token cannot be trained on `all` tokens: store pooled tokens")
    return "cls+mean"


def token_info(fingerprint: dict) -> tuple[int, bool]:
    """(num_prefix_tokens, class_token) of a store's model, from its fingerprint.

    Stores written before these keys existed came from class-token ViTs with one prefix token (the only models
    accepted then), so that is the default.
    """
    return int(fingerprint.get("num_prefix_tokens", 1)), bool(fingerprint.get("class_token", True))
