"""The model sections of the run config: one frozen dataclass per network family (`model.mlp`,
`model.unet`, `model.autoencoder`, `model.diffusers_unet`) and `ModelConfig` that holds them.
A new family is one section here, one entry in MODEL_FAMILIES and one builder in models/."""

from __future__ import annotations

from dataclasses import dataclass, field

from .checks import check_choice, check_positive, check_unit
from .coerce import typed
from .errors import ConfigError

MODEL_KINDS = ("auto", "mlp", "unet", "autoencoder", "diffusers_unet")  # "auto" or a section below
BLOCKS = ("resnet", "convnext")
ATTENTIONS = ("full", "linear")
RECON_LOSSES = ("l1", "l2")  # the autoencoder's reconstruction loss
AE_FACTORS = (2, 4, 8)  # the autoencoder's downsampling factors f: 1, 2 or 3 stride-2 levels
# the blocks of diffusers' UNet2DModel that take no text conditioning (its get_down_block / get_up_block)
DIFFUSERS_BLOCKS = {
    "down": ("DownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D", "SkipDownBlock2D",
             "AttnSkipDownBlock2D"),
    "up": ("UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D", "SkipUpBlock2D", "AttnSkipUpBlock2D"),
}  # fmt: skip


@dataclass(frozen=True)
class MLPConfig:
    """The residual MLP for points (models/mlp.py)."""

    hidden: int = 256
    depth: int = 3
    emb_dim: int = 128
    input_scale: float = 25.0  # sinusoidal features of the input coordinates (0 = raw coordinates)

    def __post_init__(self):
        typed(self)
        for name in ("hidden", "depth", "emb_dim"):
            check_positive(f"model.mlp.{name}", getattr(self, name))
        check_positive("model.mlp.input_scale", self.input_scale, allow_zero=True)


@dataclass(frozen=True)
class UNetConfig:
    """The U-Net for images (models/unet.py)."""

    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = (7,)
    dropout: float = 0.0
    block: str = "resnet"
    attention: str = "full"
    num_groups: int = 8
    patch_size: int = 1  # > 1: fold p x p pixel patches into channels before the first level
    head_channels: int = 0  # > 0 (patch_size > 1): a full-resolution residual head after un-patching

    def __post_init__(self):
        typed(self)
        check_choice("block", self.block, BLOCKS)
        check_choice("attention", self.attention, ATTENTIONS)
        for name in ("base_channels", "num_res_blocks", "num_groups", "patch_size"):
            check_positive(f"model.unet.{name}", getattr(self, name))
        check_positive("model.unet.head_channels", self.head_channels, allow_zero=True)
        if self.head_channels and self.patch_size == 1:
            raise ConfigError("model.unet.head_channels > 0 needs model.unet.patch_size > 1")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ConfigError(f"model.unet.channel_mult must be positive integers, got {self.channel_mult}")
        check_unit("model.unet.dropout", self.dropout)


@dataclass(frozen=True)
class AutoencoderConfig:
    """The KL autoencoder of latent diffusion (models/autoencoder.py) and its training loss."""

    factor: int = 4  # downsampling factor f: latents are (latent_channels, H/f, W/f)
    latent_channels: int = 4
    base_channels: int = 16  # 32 trains 3x slower per image on a CPU (docs/latent.md)
    channel_mult: tuple[int, ...] = ()  # one per level (log2 f + 1); () = 1, 2, 4, 4 ...
    num_res_blocks: int = 1
    num_groups: int = 8
    recon_loss: str = "l1"  # per-pixel reconstruction loss, summed over pixels
    kl_weight: float = 1e-6  # weight of KL(q(z|x) || N(0, I)) against the summed reconstruction loss

    def __post_init__(self):
        typed(self)
        check_choice("model.autoencoder.factor", self.factor, AE_FACTORS)
        for name in ("latent_channels", "base_channels", "num_res_blocks", "num_groups"):
            check_positive(f"model.autoencoder.{name}", getattr(self, name))
        if self.channel_mult and min(self.channel_mult) < 1:
            raise ConfigError(f"model.autoencoder.channel_mult must be positive integers, "
                              f"got {self.channel_mult}")  # fmt: skip
        check_choice("model.autoencoder.recon_loss", self.recon_loss, RECON_LOSSES)
        check_positive("model.autoencoder.kl_weight", self.kl_weight, allow_zero=True)


@dataclass(frozen=True)
class DiffusersUNetConfig:
    """diffusers' `UNet2DModel` (models/diffusers_unet.py; needs the `diffusers` package), by its own
    option names. sample_size, in/out_channels and num_class_embeds follow the run's data, variance
    and model.num_classes. The defaults match the mnist preset's U-Net in size (32-64-64, attention at
    the 7x7 level); `ddpm import` fills the section from a diffusers folder's unet/config.json."""

    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D")
    mid_block_type: str | None = "UNetMidBlock2D"  # None: no middle block
    add_attention: bool = True  # attention in the middle block
    attention_head_dim: int | None = 8  # None: one head as wide as the block
    norm_num_groups: int = 32
    attn_norm_num_groups: int | None = None
    norm_eps: float = 1e-5
    dropout: float = 0.0
    act_fn: str = "silu"
    time_embedding_dim: int | None = None  # None: 4 x block_out_channels[0]
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    center_input_sample: bool = False
    mid_block_scale_factor: float = 1.0
    downsample_padding: int = 1
    downsample_type: str = "conv"
    upsample_type: str = "conv"
    resnet_time_scale_shift: str = "default"
    null_label: bool = True  # class-conditional: the embedding's last row is the null label (CFG)

    def __post_init__(self):
        typed(self)
        n = len(self.block_out_channels)
        if not n or min(self.block_out_channels) < 1:
            raise ConfigError(f"model.diffusers_unet.block_out_channels must be positive integers, "
                              f"got {self.block_out_channels}")  # fmt: skip
        for side in ("down", "up"):
            types = getattr(self, f"{side}_block_types")
            if len(types) != n:
                raise ConfigError(f"model.diffusers_unet.{side}_block_types needs one block per entry of "
                                  f"block_out_channels ({n}), got {len(types)}")  # fmt: skip
            for t in types:
                check_choice(f"model.diffusers_unet.{side}_block_types", t, DIFFUSERS_BLOCKS[side])
        check_choice("model.diffusers_unet.mid_block_type", self.mid_block_type, ("UNetMidBlock2D", None))
        check_choice("model.diffusers_unet.downsample_type", self.downsample_type, ("conv", "resnet"))
        check_choice("model.diffusers_unet.upsample_type", self.upsample_type, ("conv", "resnet"))
        check_choice("model.diffusers_unet.resnet_time_scale_shift", self.resnet_time_scale_shift,
                     ("default", "scale_shift"))  # fmt: skip
        for name in ("layers_per_block", "norm_num_groups", "attention_head_dim", "attn_norm_num_groups",
                     "time_embedding_dim", "norm_eps"):  # fmt: skip
            if getattr(self, name) is not None:
                check_positive(f"model.diffusers_unet.{name}", getattr(self, name))
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ConfigError(f"model.diffusers_unet.norm_num_groups={self.norm_num_groups} must divide "
                              f"every block width, not {bad}")  # fmt: skip
        check_unit("model.diffusers_unet.dropout", self.dropout)


@dataclass(frozen=True)
class ModelConfig:
    """The network: `kind="auto"` picks the MLP for points and the U-Net for images; each family
    keeps its hyper-parameters in its own section."""

    kind: str = "auto"
    num_classes: int = 0  # > 0: class-conditional, model(x_t, t, y=labels); labels come from the data
    mlp: MLPConfig = field(default_factory=MLPConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    diffusers_unet: DiffusersUNetConfig = field(default_factory=DiffusersUNetConfig)

    def __post_init__(self):
        typed(self)
        check_choice("model kind", self.kind, MODEL_KINDS)
        check_positive("model.num_classes", self.num_classes, allow_zero=True)


MODEL_FAMILIES = {"mlp": MLPConfig, "unet": UNetConfig, "autoencoder": AutoencoderConfig,
                  "diffusers_unet": DiffusersUNetConfig}  # fmt: skip
LEGACY_FAMILIES = ("mlp", "unet")  # the families whose options ddpmkit 0.1 kept flat in `model`




def has_null_label(model: ModelConfig) -> bool:
    """Whether a class-conditional network has the null label that unlabelled samples and classifier-free
    guidance use (ddpmkit's networks always; an imported diffusers UNet only when told so)."""
    return model.kind != "diffusers_unet" or model.diffusers_unet.null_label
