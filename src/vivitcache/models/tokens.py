"""Token kinds, and the one rule "stored tokens → frame feature" that extract, stage 1, stage 2, predict and bench use.

What a store keeps per frame (`extract --tokens`, the store's `layout.tokens`; names in `store.layout.TOKEN_KINDS`):

| kind | K | what |
|---|---|---|
| `pooled` (default) | 1 | the model's own image embedding, `forward_head(forward_features(x), pre_logits=True)`: class token, average, attention pool (MAP), fc_norm, DeiT's class/distillation average: whatever timm does for that model |
| `cls` | 1 | the class token after the final norm (models with a class token only) |
| `pooled+mean`, `cls+mean` | 2 | that embedding, then the mean patch token |
| `all` | P + L | `forward_features` as it is: P prefix tokens (class, registers, distillation) then L patch tokens |

What the temporal stage sees per frame (`ModelConfig.frame_token`): `pooled`, `cls`, `pooled+mean` or `cls+mean`
(the latter two are [pooled or cls ‖ mean patch], width 2·D). A frame token can be taken from any stored kind that
holds its pieces: `cls` and `cls+mean` also from `all` (class token = prefix 0, mean over the patch tokens); `pooled`
only from a store that kept it, since attention pooling needs the model's head.
"""

from __future__ import annotations

import torch
from torch import nn

from vivitcache.errors import UserError

from vivitcache.store.layout import FRAME_TOKENS, TOKEN_KINDS, TOKENS_PER_KIND


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


def tokens_per_frame(spatial: nn.Module, kind: str) -> int:
    """K, the number of tokens stored per frame for a token kind."""
    check_token_kind(spatial, kind)
    if kind == "all":
        return spatial.patch_embed.num_patches + spatial.num_prefix_tokens
    return TOKENS_PER_KIND[kind]


def frame_tokens(spatial: nn.Module, frames: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-frame tokens of the spatial model: frames [N, C, H, W] → [N, K, D] (K from `tokens_per_frame`)."""
    x = spatial.forward_features(frames)  # [N, P + L, D]: P prefix tokens, then patches; final norm applied
    if kind == "all":
        return x  # [N, P + L, D]
    first, _, mean = kind.partition("+")
    if first == "pooled":
        head = spatial.forward_head(x, pre_logits=True)  # [N, D], the model's own pooling
    else:
        head = x[:, 0]  # [N, D], class token (check_token_kind refuses models without one)
    if not mean:
        return head[:, None]  # [N, 1, D]
    patches = x[:, spatial.num_prefix_tokens:].mean(dim=1)  # [N, D]
    return torch.stack([head, patches], dim=1)  # [N, 2, D]


def _piece(tokens: torch.Tensor, stored_kind: str, piece: str, num_prefix_tokens: int, class_token: bool):
    """One piece (`pooled`, `cls` or `mean`) of the stored tokens [..., K, D] → [..., D]; None if not held."""
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


def frame_feature_dim(spatial_dim: int, frame_token: str) -> int:
    """Width of the per-frame feature for a spatial width D."""
    return spatial_dim * len(frame_token.split("+"))


def default_frame_token(stored_kind: str, class_token: bool = True) -> str:
    """The frame token a model trained on a store takes when none is asked for: the stored one itself."""
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
