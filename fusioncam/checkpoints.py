"""Foreign checkpoint layouts → our modules, loaded strictly and without unpickling arbitrary objects.

Each layout is a pure function from the file's state dict to ours (a list of key rewrites plus the keys that
are known and deliberately unused). Loading is strict both ways: every parameter of the model must be filled
and every key of the file must be either used or named by the layout's ignore list, so a wrong or truncated
checkpoint fails loudly instead of leaving random weights behind.
"""

from __future__ import annotations

import re
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file
from torch import nn

from fusioncam.models.layers import resample_position_embedding

if TYPE_CHECKING:
    from transformers import T5ForConditionalGeneration

    from fusioncam.models.blip import BlipCaption, BlipITM
    from fusioncam.models.difnet import DifnetEncoder


class CheckpointError(ValueError):
    """A checkpoint does not fit the model it is loaded into."""


@dataclass(frozen=True)
class Layout:
    """How one publisher names the weights of one model family.

    `renames` are (regex, replacement) pairs tried in order on each key (the first match wins, keys that match
    none are already ours); `ignore` are
    regexes of keys the publisher ships that this model does not use (momentum encoders, queues, buffers).
    """

    name: str
    renames: tuple[tuple[str, str], ...]
    ignore: tuple[str, ...] = ()

    def convert(self, state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
        """Rename keys to ours; returns (converted, ignored keys)."""
        converted: dict[str, torch.Tensor] = {}
        ignored: list[str] = []
        for key, value in state_dict.items():
            if any(re.fullmatch(pattern, key) for pattern in self.ignore):
                ignored.append(key)
                continue
            new_key = key
            for pattern, replacement in self.renames:
                new_key, count = re.subn(f"^{pattern}", replacement, key)
                if count:
                    break
            converted[new_key] = value
        return converted, ignored


# BERT's verbose names → ours, shared by every BLIP text tower (the prefix is the tower's name in the file).
_BERT_RENAMES = (
    (r"embeddings\.LayerNorm\.", "embeddings.norm."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.", r"layers.\1.self_attn."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.self_attn.out."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.self_attn_norm."),
    (r"encoder\.layer\.(\d+)\.crossattention\.self\.", r"layers.\1.cross_attn."),
    (r"encoder\.layer\.(\d+)\.crossattention\.output\.dense\.", r"layers.\1.cross_attn.out."),
    (r"encoder\.layer\.(\d+)\.crossattention\.output\.LayerNorm\.", r"layers.\1.cross_attn_norm."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.mlp.fc1."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.mlp.fc2."),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.mlp_norm."),
)


def _prefixed(prefix: str, target: str, renames: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    return tuple((re.escape(prefix) + pattern, target + replacement) for pattern, replacement in renames)


# The ViT of transformers' BLIP port → timm names.
_HF_VIT_RENAMES = (
    (r"embeddings\.class_embedding", "cls_token"),
    (r"embeddings\.position_embedding", "pos_embed"),
    (r"embeddings\.patch_embedding\.", "patch_embed.proj."),
    (r"encoder\.layers\.(\d+)\.self_attn\.projection\.", r"blocks.\1.attn.proj."),
    (r"encoder\.layers\.(\d+)\.self_attn\.qkv\.", r"blocks.\1.attn.qkv."),
    (r"encoder\.layers\.(\d+)\.layer_norm1\.", r"blocks.\1.norm1."),
    (r"encoder\.layers\.(\d+)\.layer_norm2\.", r"blocks.\1.norm2."),
    (r"encoder\.layers\.(\d+)\.mlp\.", r"blocks.\1.mlp."),
    (r"post_layernorm\.", "norm."),
)

LAVIS_BLIP_ITM = Layout(
    name="lavis",
    renames=(
        (r"visual_encoder\.", "vision_encoder."),
        *_prefixed("text_encoder.", "text_encoder.", _BERT_RENAMES),
    ),
    ignore=(
        r"text_encoder\.embeddings\.position_ids",  # a buffer of arange(512), recomputed on the fly
        r"(visual_encoder|text_encoder|vision_proj|text_proj)_m\..*",  # momentum encoders (training only)
        r"(image|text|idx)_queue",
        r"queue_ptr|ptr_queue",
        r"temp",
    ),
)

HF_BLIP_ITM = Layout(
    name="hf",
    renames=(
        *_prefixed("vision_model.", "vision_encoder.", _HF_VIT_RENAMES),
        *_prefixed("text_encoder.", "text_encoder.", _BERT_RENAMES),
    ),
    ignore=(r"text_encoder\.embeddings\.position_ids", r"text_encoder\.pooler\..*"),
)

# Our own names, as `fusioncam train` writes them (`BlipITM.state_dict()`): nothing to rename or ignore.
FUSIONCAM_BLIP_ITM = Layout(name="fusioncam", renames=())

BLIP_ITM_LAYOUTS = {layout.name: layout for layout in (LAVIS_BLIP_ITM, HF_BLIP_ITM, FUSIONCAM_BLIP_ITM)}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file: safetensors, or a torch pickle read with `weights_only=True`.

    Pickles may wrap the state dict as `{"model": ...}` (LAVIS, EfficientSAM) or `{"state_dict": ...}`. A `.zip`
    archive holding one such file (EfficientSAM ViT-S is published that way) is read through that file.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if path.suffix == ".zip":
        return _read_zipped_state_dict(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for refused or broken pickles
        raise CheckpointError(f"{path}: cannot be read as a weights-only torch checkpoint ({error})") from error
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return obj


def _read_zipped_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of the one checkpoint file inside a zip archive, unpacked to a temporary folder.

    Folders and macOS metadata (`__MACOSX/`, `._*` files) are skipped; any other second file makes the archive
    ambiguous, which is an error rather than a guess.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = [
                info
                for info in archive.infolist()
                if not info.is_dir()
                and not info.filename.startswith("__MACOSX/")
                and not Path(info.filename).name.startswith("._")
            ]
            if len(members) != 1:
                names = ", ".join(info.filename for info in members) or "nothing"
                raise CheckpointError(f"{path}: expected one checkpoint file in the archive, found {names}")
            with tempfile.TemporaryDirectory(prefix="fusioncam-") as folder:
                return read_state_dict(archive.extract(members[0], folder))
    except zipfile.BadZipFile as error:
        raise CheckpointError(f"{path}: not a valid zip archive ({error})") from error


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """`load_state_dict(strict=True)` with an error that lists what is missing, unexpected or mis-shaped."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mis_shaped = sorted(
        f"{key}: file {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in set(expected) & set(state_dict)
        if state_dict[key].shape != expected[key].shape
    )
    problems = [
        (label, keys)
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mis_shaped))
        if keys
    ]
    if problems:
        lines = [f"{source} does not fit {type(model).__name__}:"]
        for label, keys in problems:
            shown = ", ".join(keys[:8]) + (f", … ({len(keys)} in all)" if len(keys) > 8 else "")
            lines.append(f"  {label}: {shown}")
        raise CheckpointError("\n".join(lines))
    # A model built on the meta device (no memory, no random init) takes the checkpoint's tensors as they are.
    on_meta = any(param.is_meta for param in model.parameters())
    model.load_state_dict(state_dict, strict=True, assign=on_meta)


def load_blip_itm_weights(
    model: BlipITM, state_dict: Mapping[str, torch.Tensor], layout: str, source: str = "checkpoint"
) -> list[str]:
    """Load a LAVIS, Hugging Face or fusioncam BLIP ITM state dict into `BlipITM`; returns the ignored keys."""
    return _load_blip(model, state_dict, BLIP_ITM_LAYOUTS, layout, source)


def _load_blip(
    model: BlipITM | BlipCaption,
    state_dict: Mapping[str, torch.Tensor],
    layouts: Mapping[str, Layout],
    layout: str,
    source: str,
) -> list[str]:
    """Convert with `layouts[layout]`, resample the position embedding to the model's grid, load strictly.

    The position embedding is resampled when the checkpoint was trained at another resolution.
    """
    if layout not in layouts:
        raise CheckpointError(f"unknown layout {layout!r} for {type(model).__name__}; known: {', '.join(layouts)}")
    converted, ignored = layouts[layout].convert(state_dict)
    key = "vision_encoder.pos_embed"
    if key in converted:
        try:
            converted[key] = resample_position_embedding(converted[key], model.vision_encoder.grid_size)
        except ValueError as error:
            raise CheckpointError(f"{source}: {key}: {error}") from error
    load_strict(model, converted, source)
    return ignored


# DIFNet's `DifnetEncoder` state dict (mrwu-mac/DIFNet) → `fusioncam.models.difnet.DifnetEncoder`.
_DIFNET_RENAMES = (
    (r"layers\.(\d+)\.mhatt\.attention\.fc_q\.", r"layers.\1.attn.query."),
    (r"layers\.(\d+)\.mhatt\.attention\.fc_k\.", r"layers.\1.attn.key."),
    (r"layers\.(\d+)\.mhatt\.attention\.fc_v\.", r"layers.\1.attn.value."),
    (r"layers\.(\d+)\.mhatt\.attention\.fc_o\.", r"layers.\1.attn.out."),
    (r"layers\.(\d+)\.mhatt\.layer_norm\.", r"layers.\1.attn_norm."),
    (r"layers\.(\d+)\.lnorm\.", r"layers.\1.skip_norms.0."),
    (r"layers\.(\d+)\.lnorm1\.", r"layers.\1.skip_norms.1."),
    (r"layers\.(\d+)\.pwff\.fc([12])\.", r"layers.\1.ffn.fc\2."),
    (r"layers\.(\d+)\.pwff\.layer_norm\.", r"layers.\1.ffn_norms.0."),
    (r"layers\.(\d+)\.pwff\.layer_norm1\.", r"layers.\1.ffn_norms.1."),
)


def difnet_encoder_layout(fusion_layer: int, num_layers: int) -> Layout:
    """The original DIFNet encoder's names for a model that sums its streams at layer `fusion_layer` (its `Lf`).

    The original holds LayerNorms its forward never reads, and ours does not have them, so their keys are ignored:
    the attention block's pixel norm in every layer (the block is never told the stream) and the pixel norms of
    the layers from the merge on (they only see the fused stream, which uses the grid norms).
    """
    merged = "|".join(str(index) for index in range(fusion_layer, num_layers))
    return Layout(
        name="difnet",
        renames=_DIFNET_RENAMES,
        ignore=(
            r"layers\.\d+\.mhatt\.layer_norm1\.(weight|bias)",
            rf"layers\.({merged})\.(lnorm1|pwff\.layer_norm1)\.(weight|bias)",
        ),
    )


def load_difnet_encoder_weights(
    model: DifnetEncoder, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> list[str]:
    """Load an original `DifnetEncoder` state dict into our `DifnetEncoder`; returns the ignored (unused) keys."""
    layout = difnet_encoder_layout(model.config.Lf, model.config.N)
    converted, ignored = layout.convert(state_dict)
    load_strict(model, converted, source)
    return ignored


# EfficientSAM (yformer/EfficientSAM): our modules keep the original names, so there is no Layout to apply.
def load_efficient_sam_weights(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """Load an official EfficientSAM state dict (`torch.load(f)["model"]`) strictly.

    Our modules keep the original parameter names, so the layout conversion is the identity; `model` may also be
    one part (e.g. the image encoder) with a state dict of that part's keys. The position embedding stays at its
    pre-training grid: the model resamples it on every call, as the original does.
    """
    load_strict(model, state_dict, source)


# UnifiedQA / T5: transformers' `T5ForConditionalGeneration` names are used as they are. Checkpoints saved by old
# transformers versions carry a relative-position bias for the decoder's cross-attention that T5 never uses.
T5_LAYOUT = Layout(
    name="t5",
    renames=(),
    ignore=(r"decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight",),
)

# One tensor under four names: `save_pretrained` keeps only `shared.weight`, older `.bin` files hold all four.
T5_TIED_KEYS = ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight")


def _check_tied(state_dict: Mapping[str, torch.Tensor], tied: tuple[str, ...], source: str) -> list[str]:
    """The names of `tied` the file has, after checking that they all hold the same tensor."""
    present = [key for key in tied if key in state_dict]
    for key in present[1:]:
        first = state_dict[present[0]]
        if state_dict[key].shape != first.shape or not torch.equal(state_dict[key], first):
            raise CheckpointError(f"{source}: {key} should equal {present[0]} (tied weights) but differs")
    return present


def fill_tied(state_dict: Mapping[str, torch.Tensor], tied: tuple[str, ...], source: str) -> dict[str, torch.Tensor]:
    """Give every name in `tied` the one tensor the file stores for them, refusing copies that differ."""
    present = _check_tied(state_dict, tied, source)
    if not present:
        return dict(state_dict)  # load_strict names them as missing
    return dict(state_dict) | dict.fromkeys(tied, state_dict[present[0]])


def drop_tied(state_dict: Mapping[str, torch.Tensor], tied: tuple[str, ...], source: str) -> dict[str, torch.Tensor]:
    """Keep only the first name of `tied` (our model stores a tied tensor once), refusing copies that differ."""
    _check_tied(state_dict, tied, source)
    return {key: value for key, value in state_dict.items() if key not in tied[1:]}


def load_t5_weights(
    model: T5ForConditionalGeneration, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> list[str]:
    """Load a `T5ForConditionalGeneration` state dict strictly into `model` (that class); returns the ignored keys.

    The tied embedding may be stored once or under all its names; afterwards the model's four names share one
    parameter again.
    """
    converted, ignored = T5_LAYOUT.convert(state_dict)
    load_strict(model, fill_tied(converted, T5_TIED_KEYS, source), source)
    # Loading onto the meta device assigns each name its own parameter object; tie them back together.
    model.tie_weights()
    return ignored


# The captioner's decoder: `text_decoder.bert` is BLIP's BERT (same renames), `cls.predictions` its LM head.
_LM_HEAD_RENAMES = (
    (r"cls\.predictions\.transform\.dense\.", "lm_head.dense."),
    (r"cls\.predictions\.transform\.LayerNorm\.", "lm_head.norm."),
    (r"cls\.predictions\.bias", "lm_head.bias"),
)
# Names under which files store the decoder's tied tensors; the first of each group is the one we keep.
CAPTION_TIED_KEYS = (
    ("text_decoder.bert.embeddings.word_embeddings.weight", "text_decoder.cls.predictions.decoder.weight"),
    ("text_decoder.cls.predictions.bias", "text_decoder.cls.predictions.decoder.bias"),
)

LAVIS_BLIP_CAPTION = Layout(
    name="lavis",
    renames=(
        (r"visual_encoder\.", "vision_encoder."),
        *_prefixed("text_decoder.bert.", "text_decoder.bert.", _BERT_RENAMES),
        *_prefixed("text_decoder.", "text_decoder.", _LM_HEAD_RENAMES),
    ),
    ignore=(r"text_decoder\.bert\.embeddings\.position_ids", r"visual_encoder_m\..*", r"text_decoder_m\..*"),
)

HF_BLIP_CAPTION = Layout(
    name="hf",
    renames=(
        *_prefixed("vision_model.", "vision_encoder.", _HF_VIT_RENAMES),
        *_prefixed("text_decoder.bert.", "text_decoder.bert.", _BERT_RENAMES),
        *_prefixed("text_decoder.", "text_decoder.", _LM_HEAD_RENAMES),
    ),
    ignore=(r"text_decoder\.bert\.embeddings\.position_ids",),
)

# Our own names (`BlipCaption.state_dict()`), for captioners trained with fusioncam: nothing to rename or ignore.
FUSIONCAM_BLIP_CAPTION = Layout(name="fusioncam", renames=())

BLIP_CAPTION_LAYOUTS = {layout.name: layout for layout in (LAVIS_BLIP_CAPTION, HF_BLIP_CAPTION, FUSIONCAM_BLIP_CAPTION)}


def load_blip_caption_weights(
    model: BlipCaption, state_dict: Mapping[str, torch.Tensor], layout: str, source: str = "checkpoint"
) -> list[str]:
    """Load a LAVIS, Hugging Face or fusioncam BLIP captioner state dict into `BlipCaption`; returns ignored keys."""
    for group in CAPTION_TIED_KEYS:
        state_dict = drop_tied(state_dict, group, source)
    return _load_blip(model, state_dict, BLIP_CAPTION_LAYOUTS, layout, source)
