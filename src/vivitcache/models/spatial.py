"""The spatial backbone: any timm ViT-family image model as users name it, with weights from where users keep them.

Names: an alias (`vit-b`, see `SPATIAL_ALIASES`), or a timm name with or without its pretrained tag
(`vit_base_patch16_clip_224.openai`, `vit_so400m_patch14_siglip_224.webli`, `eva02_large_patch14_224.mim_m38m`). A
name without a tag takes timm's default tag. The tag selects timm's pretrained cfg, which gives the preprocessing
(`Preprocess.from_timm`: mean, std, crop_pct, interpolation, native input size). The families are timm's
`vision_transformer` (augreg, CLIP/OpenCLIP, DINOv2 with and without registers, SigLIP/SigLIP 2, gap), `deit`
(distilled included) and `eva` (EVA, EVA02): a patch grid plus timm's `forward_features` / `forward_head`.

Weights, never from a network:
- none: random init under torch's seed (tests, demos);
- `weights=FILE`: safetensors, `.pth`, `.bin` (open_clip and original DINOv2 checkpoints included);
- `weights=DIR`: a model folder holding `model.safetensors` or `pytorch_model.bin` (a Hugging Face snapshot);
- `pretrained=True`: the tag's file in the local Hugging Face cache (`HF_HUB_CACHE`, else `HF_HOME/hub`).
Every file is read by timm's reader (`load_state_dict(weights_only=True)`: a pickle payload never runs; EMA aware)
and converted by the architecture's own `checkpoint_filter_fn` (open_clip / DINOv2 keys, position-embedding
resampling); classifier heads (`head`, `head_dist`, `fc`) are dropped.
"""

from __future__ import annotations

import difflib
import inspect
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import timm
import torch
from torch import nn

from vivitcache.errors import UserError

SPATIAL_ALIASES: dict[str, str] = {
    "vit-ti": "vit_tiny_patch16_224.augreg_in21k_ft_in1k",  # D=192, 12 blocks
    "vit-s": "vit_small_patch16_224.augreg_in21k_ft_in1k",  # D=384, 12 blocks
    "vit-b": "vit_base_patch16_224.augreg2_in21k_ft_in1k",  # D=768, 12 blocks
    "vit-l": "vit_large_patch16_224.augreg_in21k_ft_in1k",  # D=1024, 24 blocks
    "vit-h": "vit_huge_patch14_clip_224.laion2b",  # D=1280, 32 blocks (OpenCLIP ViT-H/14)
    "vit-g": "vit_giant_patch14_clip_224.laion2b",  # D=1408, 40 blocks (OpenCLIP ViT-g/14)
}
"""Short names for the ViT sizes of the paper → timm names whose tags have public weights."""

FAMILIES = ("vision_transformer", "deit", "eva")
"""timm modules whose models are plain ViTs: a patch grid, prefix tokens, `forward_features` / `forward_head`."""

CLASSIFIER_KEYS = ("head", "head_dist", "fc")
"""Top-level modules of a checkpoint that are classifiers, dropped on load (the spatial model has no head)."""

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")
"""What a model folder (a Hugging Face snapshot) may hold, in the order they are tried."""


class SpatialModelError(UserError, ValueError):
    """A spatial model name, override or weights that cannot be used (one line: what and why)."""


@lru_cache(maxsize=1)
def _known_names() -> tuple[str, ...]:
    """Every model name and tagged name of the supported families (for close-match suggestions)."""
    names = [n for n in timm.list_models() if _family(n) in FAMILIES]
    return tuple(names + [n for n in timm.list_pretrained() if _family(n.split(".")[0]) in FAMILIES])


def _family(arch: str) -> str | None:
    """The timm module of an architecture (`vision_transformer`, `eva`, …), None if timm does not know it."""
    if not timm.is_model(arch):
        return None
    return timm.models.model_entrypoint(arch).__module__.rsplit(".", 1)[-1]


def _known_tag(name: str) -> bool:
    try:
        return timm.models.get_pretrained_cfg(name, allow_unregistered=False) is not None
    except RuntimeError:  # timm: "Invalid pretrained tag (…) for …"
        return False


def resolve_model_name(name: str) -> str:
    """Alias or timm name → the full tagged timm name (default tag when none is given); SpatialModelError if
    timm does not know it or it is not a plain ViT, with close matches."""
    full = SPATIAL_ALIASES.get(name, name)
    arch, _, tag = full.partition(".")
    family = _family(arch)
    if family is None or (tag and not _known_tag(full)):
        close = difflib.get_close_matches(full, _known_names(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_pretrained('vit_*')"
        raise SpatialModelError(f"unknown spatial model {name!r}: {hint} (aliases: {', '.join(SPATIAL_ALIASES)})")
    if family not in FAMILIES:
        raise SpatialModelError(
            f"unknown spatial model {name!r}: it is a timm {family} model, not a plain ViT; use the families "
            f"{', '.join(FAMILIES)} (a patch grid with forward_features / forward_head)"
        )
    if not tag:
        default = timm.models.get_pretrained_cfg(arch)
        tag = default.tag if default is not None and default.tag else ""
    return f"{arch}.{tag}" if tag else arch


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder, as huggingface_hub resolves it: HF_HUB_CACHE, else HF_HOME/hub.

    Read from the environment at call time (huggingface_hub's constants are fixed at its import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def hub_weights_file(model: nn.Module, name: str) -> Path:
    """The cached weights file of a tagged model in the local Hugging Face cache; never touches a network."""
    from huggingface_hub import try_to_load_from_cache

    cfg = model.pretrained_cfg
    repo = cfg.get("hf_hub_id")
    if not repo:
        raise SpatialModelError(f"--pretrained: {name} has no Hugging Face weights in timm; pass --weights FILE")
    repo, _, revision = repo.partition("@")
    cache = hub_cache_dir()
    wanted = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else ["model.safetensors", "pytorch_model.bin"]
    for filename in wanted:
        path = try_to_load_from_cache(repo, filename, cache_dir=cache, revision=revision or None)
        if isinstance(path, str):
            return Path(path)
    folder = cache / f"models--{repo.replace('/', '--')}"
    raise SpatialModelError(
        f"--pretrained: {name} is not in the local Hugging Face cache: no {folder}/snapshots/*/{wanted[0]} "
        "(set HF_HUB_CACHE or HF_HOME, download it on a machine with a network, or pass --weights FILE)"
    )


def weights_file(weights: str | Path) -> Path:
    """A weights file, or the weights file inside a model folder (a Hugging Face snapshot)."""
    path = Path(weights)
    if path.is_dir():
        for filename in WEIGHT_FILES:
            if (path / filename).is_file():
                return path / filename
        raise SpatialModelError(f"{path}: model folder holds none of {', '.join(WEIGHT_FILES)}")
    if not path.is_file():
        raise SpatialModelError(f"{path}: weights file not found")
    return path


def create_spatial(
    name: str,
    img_size: int | None = None,
    patch_size: int | None = None,
    depth: int | None = None,
    weights: str | Path | None = None,
    pretrained: bool = False,
) -> nn.Module:
    """A timm ViT-family model without classifier head: random init (under torch's seed), or weights from a file,
    a model folder, or (`pretrained`) the local Hugging Face cache."""
    if weights is not None and pretrained:
        raise SpatialModelError("--weights and --pretrained are exclusive")
    kwargs: dict = {"num_classes": 0}
    for key, value in (("img_size", img_size), ("patch_size", patch_size), ("depth", depth)):
        if value is not None:
            kwargs[key] = value
    timm_name = resolve_model_name(name)
    if weights is None and not pretrained:
        return timm.create_model(timm_name, pretrained=False, **kwargs)
    # built on the meta device and filled by assignment: no random init of weights that are overwritten anyway
    # (measured: 14 s for vit_giant_patch14 on 2 CPU cores, 0.4 s on meta)
    with torch.device("meta"):
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
    path = weights_file(weights) if weights is not None else hub_weights_file(model, timm_name)
    on_meta = not _computed_buffers(model)
    if not on_meta:  # buffers no checkpoint holds (EVA02's RoPE tables) are computed in __init__: build it for real
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
    load_spatial_weights(model, path, assign=on_meta)
    return model


def _computed_buffers(model: nn.Module) -> list[str]:
    """Buffers that are not part of the state dict (non-persistent), so no weights file can fill them."""
    saved = set(model.state_dict())
    return [name for name, _ in model.named_buffers() if name not in saved]


def load_spatial_weights(model: nn.Module, path: str | Path, assign: bool = False) -> None:
    """Load a checkpoint file into `model` through timm's reader and the architecture's checkpoint filter.

    Strict: every parameter and buffer must come from the file; a missing key or a key of another shape is one
    SpatialModelError naming the first such key (and both shapes).
    """
    from timm.models import load_state_dict

    path = Path(path)
    arch = model.pretrained_cfg.get("architecture", type(model).__name__)
    try:
        state = load_state_dict(str(path), weights_only=True)
    except Exception as e:  # noqa: BLE001 — any reader error (bad header, pickle refused) means the file is unusable
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpatialModelError(f"{path}: cannot read weights ({first})") from None
    state = _strip_prefix(state)
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    # timm registers DeiT-3 with `partial(checkpoint_filter_fn, adapt_layer_scale=True)`: original DeiT-3 files name
    # their layer scales gamma_1 / gamma_2
    takes_it = filter_fn is not None and "adapt_layer_scale" in inspect.signature(filter_fn).parameters
    extra = {"adapt_layer_scale": True} if takes_it and any(".gamma_1" in k for k in state) else {}
    try:
        state = filter_fn(state, model, **extra) if filter_fn is not None else state
    except Exception as e:  # noqa: BLE001 — timm's filters assume their own architecture's keys and shapes
        raise SpatialModelError(f"{path}: weights do not fit {arch} (timm's checkpoint filter: {e})") from None
    state = {k: v for k, v in state.items() if k.split(".", 1)[0] not in CLASSIFIER_KEYS}
    own = model.state_dict()
    for key, want in own.items():  # in the model's order, so "first" means the first of the model
        if key in state and tuple(state[key].shape) != tuple(want.shape):
            raise SpatialModelError(
                f"{path}: weights do not fit {arch}: {key} is {tuple(state[key].shape)} in the file, "
                f"{tuple(want.shape)} in the model (weights of another architecture or size?)"
            )
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        what = f"missing {missing[0]} {tuple(own[missing[0]].shape)}" if missing else f"unexpected {unexpected[0]}"
        raise SpatialModelError(
            f"{path}: weights do not fit {arch}: {what} ({len(missing)} missing, {len(unexpected)} unexpected keys)"
        )
    # in the model's dtype (fp16/bf16 files into an fp32 model): `assign` would otherwise keep the file's dtype
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True, assign=assign)


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept DDP's `module.` prefix, and a vivitcache stage-1 checkpoint (`spatial.`, `adapter.`, `temporal.`,
    `head.` keys): its spatial part."""
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if any(k.startswith("spatial.") for k in state):
        state = {k[len("spatial."):]: v for k, v in state.items() if k.startswith("spatial.")}
    return state


@dataclass(frozen=True)
class SpatialSpec:
    """A picklable recipe for the frozen spatial model: what extract's Dask workers, predict and bench rebuild it from.

    Sources, in this order: a stage-1 run (`checkpoint`: its trained spatial part), weights (`weights` file or
    folder, or `pretrained` from the Hugging Face cache), or a random init under `seed` (tests, demos).
    """

    name: str
    """Full tagged timm name (aliases resolved)."""
    img_size: int | None = None
    """Input size override, None for the model's default."""
    patch_size: int | None = None
    """Patch size override, None for the model's default."""
    depth: int | None = None
    """Number of blocks override, None for the model's default."""
    weights: str | None = None
    """Weights file or model folder, or None."""
    pretrained: bool = False
    """Load the tag's weights from the local Hugging Face cache."""
    checkpoint: str | None = None
    """Stage-1 run folder whose `spatial` part holds the weights, or None."""
    seed: int = 0
    """Seed of the random init (used when there are no weights)."""
    weights_sha256: str | None = None
    """Expected `state_dict_sha256` of the built model; None until known (the first build sets it)."""

    def build(self, checkpoint_state: dict[str, torch.Tensor] | None = None) -> nn.Module:
        """The spatial model in eval mode without gradients; SpatialModelError if its weights hash is not the expected.
        `checkpoint_state`: the stage-1 run's spatial part when the caller has loaded it already (not read again)."""
        from vivitcache.hashing import state_dict_sha256

        if self.checkpoint is not None:
            from vivitcache.runs import load_stage1

            state = checkpoint_state if checkpoint_state is not None else load_stage1(self.checkpoint).part("spatial")
            # built on the meta device (no random init), then the checkpoint's tensors are assigned; strict, so
            # every saved parameter and buffer is real afterwards; models with computed buffers (EVA02's RoPE
            # tables, which no checkpoint holds) are built for real instead
            with torch.device("meta"):
                model = create_spatial(self.name, self.img_size, self.patch_size, self.depth)
            on_meta = not _computed_buffers(model)
            if not on_meta:
                model = create_spatial(self.name, self.img_size, self.patch_size, self.depth)
            try:
                model.load_state_dict(state, strict=True, assign=on_meta)
            except RuntimeError as e:
                first = str(e).strip().splitlines()[0]
                raise SpatialModelError(f"{self.checkpoint}: spatial part does not fit {self.name} ({first})") from None
        else:
            # random init under our own seed, without disturbing the caller's torch RNG (or weights, if given)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                model = create_spatial(self.name, self.img_size, self.patch_size, self.depth, self.weights,
                                       self.pretrained)
        model.eval().requires_grad_(False)
        if self.weights_sha256 is not None:
            got = state_dict_sha256(model)
            if got != self.weights_sha256:
                raise SpatialModelError(
                    f"spatial model {self.name} built with weights sha256 {got[:16]}…, expected "
                    f"{self.weights_sha256[:16]}… (weights file or checkpoint changed?)"
                )
        return model
