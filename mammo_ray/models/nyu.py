"""The NYU breast cancer screening model (Wu et al. 2019), image-wise single-image variant.

Clean-room implementation from the facts in docs/design.md, "The NYU model" (the reference code is AGPL-3.0 and
is not used here).

Trunk ("ResNet-22", pre-activation ResNet v2), one per view angle:

    first_conv   7x7 conv, stride 2, padding 0, 1 -> 16 channels, no bias
    first_pool   3x3 max-pool, stride 2, padding 0
    layer_list   5 stages x 2 pre-activation basic blocks, strides 1,2,2,2,2, channels 16..256
    final_bn     BatchNorm + ReLU

A pre-activation block computes ``pre = relu(bn1(x))``, ``y = conv2(relu(bn2(conv1(pre))))`` and
returns ``y + shortcut``. The first block of every stage (stage 1 too, although 16 -> 16) has a
projection shortcut, a 1x1 conv without BN applied to the pre-activated input ``pre``; the other
blocks use the identity shortcut ``x`` (the clean identity path of ResNet v2). All 3x3 convs have
padding 1 and no bias.

In training mode only, Gaussian noise with std ``input_noise_std`` (0.01) is added to the input, as in
the published training; in eval mode the forward pass is deterministic.

Feature map sizes (eval, batch 1): a CC window 2677 x 1942 gives 256 x 42 x 31, an MLO window
2974 x 1748 gives 256 x 47 x 28, a 256 x 256 input gives 256 x 4 x 4.

Image-wise model: trunk `cc` serves L-CC and R-CC, trunk `mlo` serves L-MLO and R-MLO; per view
``fc1_<view>`` (Linear 256->256, ReLU) on the globally pooled features and ``output_layer_<view>.fc_layer``
(Linear 256->4) whose four outputs are two independent 2-way log-softmaxes:
(benign absent, benign present), (malignant absent, malignant present). Every sample of a batch is
processed independently (the reference single-image forward drops samples for batch > 2; not here).

State-dict keys follow the published checkpoints: ``four_view_resnet.{cc,mlo}.first_conv.weight``,
``...layer_list.<stage>.<block>.{bn1,conv1,bn2,conv2}.*``, ``...layer_list.<stage>.0.downsample.0.weight``,
``...final_bn.*``, ``fc1_<view>.*``, ``output_layer_<view>.fc_layer.*``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mammo_ray.models.weight_loading import as_state_dict, load_state_dict_strict, seeded_init
from mammo_ray.models.weights import WeightsError

VIEWS: tuple[str, ...] = ("lcc", "rcc", "lmlo", "rmlo")
VIEW_TRUNK: dict[str, str] = {"lcc": "cc", "rcc": "cc", "lmlo": "mlo", "rmlo": "mlo"}
TRUNKS: tuple[str, ...] = ("cc", "mlo")
STAGE_CHANNELS: tuple[int, ...] = (16, 32, 64, 128, 256)
STAGE_STRIDES: tuple[int, ...] = (1, 2, 2, 2, 2)
BLOCKS_PER_STAGE = 2
FEATURE_CHANNELS = 256
INPUT_NOISE_STD = 0.01
#: Input windows (height, width) of the published model.
CC_WINDOW: tuple[int, int] = (2677, 1942)
MLO_WINDOW: tuple[int, int] = (2974, 1748)
#: Pooling name -> feature dimension. "4x4" is the paper's 4096-d vector (channel-major flatten).
POOL_DIMS: dict[str, int] = {"global": FEATURE_CHANNELS, "4x4": FEATURE_CHANNELS * 16}
#: Extractors of the paper's Table 2: "lcc" = every image through the CC trunk ("NYU L-CC"),
#: "avg" = mean of CC-trunk and MLO-trunk features of the image ("NYU Avg"; with shared trunks the
#: mean of the four view extractors L-CC, R-CC, L-MLO, R-MLO equals this).
EXTRACTORS: tuple[str, ...] = ("lcc", "avg")
OUTPUT_ROWS = 4
#: The published image-wise file for each input channel count: the image alone, or with the two heatmaps.
IMAGE_WEIGHTS_FILES: dict[int, str] = {1: "ImageOnly__ModeImage_weights.p", 3: "ImageHeatmaps__ModeImage_weights.p"}

Pool = Literal["global", "4x4"]


def _conv3x3(in_channels: int, out_channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a shortcut (see module doc)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, projection: bool) -> None:
        super().__init__()
        if not projection and (stride != 1 or in_channels != out_channels):
            raise ValueError("an identity shortcut needs stride 1 and equal channel counts")
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels, 1)
        self.downsample: nn.Sequential | None = (
            nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False))
            if projection
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        shortcut = self.downsample(pre) if self.downsample is not None else x
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class NYUTrunk(nn.Module):
    """ResNet-22 trunk: (B, C, H, W) inputs -> (B, 256, h, w) feature map. C = 1 (the standardised window) for
    the image-only model, 3 (window, benign heatmap, malignant heatmap) for the image+heatmaps model."""

    def __init__(self, input_noise_std: float = INPUT_NOISE_STD, in_channels: int = 1) -> None:
        super().__init__()
        self.input_noise_std = float(input_noise_std)
        self.in_channels = in_channels
        self.first_conv = nn.Conv2d(in_channels, STAGE_CHANNELS[0], kernel_size=7, stride=2, padding=0, bias=False)
        self.first_pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0)
        stages = []
        in_channels = STAGE_CHANNELS[0]
        for channels, stride in zip(STAGE_CHANNELS, STAGE_STRIDES, strict=True):
            blocks = [PreActBlock(in_channels, channels, stride, projection=True)]
            blocks += [
                PreActBlock(channels, channels, 1, projection=False) for _ in range(BLOCKS_PER_STAGE - 1)
            ]
            stages.append(nn.Sequential(*blocks))
            in_channels = channels
        self.layer_list = nn.ModuleList(stages)
        self.final_bn = nn.BatchNorm2d(STAGE_CHANNELS[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"NYUTrunk expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if self.training and self.input_noise_std > 0:
            x = x + torch.randn_like(x) * self.input_noise_std
        x = self.first_pool(self.first_conv(x))
        for stage in self.layer_list:
            x = stage(x)
        return F.relu(self.final_bn(x))


def pool_features(feature_map: torch.Tensor, pool: str = "global") -> torch.Tensor:
    """(B, C, h, w) -> (B, C) for "global" (average) or (B, 16 C) for "4x4" (adaptive average, flattened
    channel-major: index = c * 16 + row * 4 + col)."""
    if pool == "global":
        return feature_map.mean(dim=(2, 3))
    if pool == "4x4":
        return F.adaptive_avg_pool2d(feature_map, (4, 4)).flatten(1)
    raise ValueError(f"unknown pool {pool!r} (use one of {sorted(POOL_DIMS)})")


def normalise_view(view: str) -> str:
    """'L-CC', 'l_cc', 'LCC', 'lcc' -> 'lcc'; 'R-MLO' -> 'rmlo'."""
    key = re.sub(r"[^a-z]", "", str(view).lower())
    if key not in VIEWS:
        raise ValueError(f"unknown view {view!r} (use one of {VIEWS})")
    return key


def view_key(laterality: str, view: str) -> str:
    """Manifest laterality (L/R) and view (CC/MLO) -> the model's view name ('lcc', ..., 'rmlo')."""
    return normalise_view(f"{laterality}{view}")


class OutputLayer(nn.Module):
    """Linear(256, 4) -> (B, 2, 2) log-probabilities.

    Row 0: (benign absent, benign present), row 1: (malignant absent, malignant present).
    """

    def __init__(self, in_features: int = FEATURE_CHANNELS) -> None:
        super().__init__()
        self.fc_layer = nn.Linear(in_features, OUTPUT_ROWS)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.fc_layer(h).view(h.shape[0], 2, 2), dim=-1)


class NYUImageModel(nn.Module):
    """Image-wise NYU model: two shared trunks, one head per view. See the module doc. `in_channels` 3: the
    image+heatmaps model (`ImageHeatmaps__ModeImage_weights.p`, the same keys with a 3-channel first conv)."""

    def __init__(self, input_noise_std: float = INPUT_NOISE_STD, in_channels: int = 1) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.four_view_resnet = nn.ModuleDict({name: NYUTrunk(input_noise_std, in_channels) for name in TRUNKS})
        for view in VIEWS:
            setattr(self, f"fc1_{view}", nn.Linear(FEATURE_CHANNELS, FEATURE_CHANNELS))
        for view in VIEWS:
            setattr(self, f"output_layer_{view}", OutputLayer())

    @property
    def cc(self) -> NYUTrunk:
        return self.four_view_resnet["cc"]  # type: ignore[return-value]

    @property
    def mlo(self) -> NYUTrunk:
        return self.four_view_resnet["mlo"]  # type: ignore[return-value]

    def trunk(self, name: str) -> NYUTrunk:
        if name not in TRUNKS:
            raise ValueError(f"unknown trunk {name!r} (use 'cc' or 'mlo')")
        return self.four_view_resnet[name]  # type: ignore[return-value]

    def forward(self, x: torch.Tensor, view: str) -> torch.Tensor:
        """(B, 1, H, W) windows of one view -> (B, 2, 2) log-probabilities."""
        return self.head(self.trunk(self.trunk_of_view(view))(x), view)

    @staticmethod
    def trunk_of_view(view: str) -> str:
        """The trunk a view's head reads ('cc' or 'mlo')."""
        return VIEW_TRUNK[normalise_view(view)]

    def head(self, feature_map: torch.Tensor, view: str) -> torch.Tensor:
        """A view's head on its trunk's final feature map (B, 256, h, w) -> (B, 2, 2) log-probabilities."""
        view = normalise_view(view)
        h = F.relu(getattr(self, f"fc1_{view}")(pool_features(feature_map, "global")))
        return getattr(self, f"output_layer_{view}")(h)

    def predict_proba(self, x: torch.Tensor, view: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(p_benign, p_malignant), each of shape (B,)."""
        return self.proba_from_map(self.trunk(self.trunk_of_view(view))(x), view)

    def proba_from_map(self, feature_map: torch.Tensor, view: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(p_benign, p_malignant) of a view's head on its trunk's feature map."""
        probabilities = self.head(feature_map, view).exp()
        return probabilities[:, 0, 1], probabilities[:, 1, 1]

    def features(self, x: torch.Tensor, trunk: str = "cc", pool: str = "global") -> torch.Tensor:
        """(B, 1, H, W) -> (B, 256) or (B, 4096) features of one trunk."""
        return pool_features(self.trunk(trunk)(x), pool)

    def extract(self, x: torch.Tensor, extractor: str = "lcc", pool: str = "global") -> torch.Tensor:
        """The paper's extractors: "lcc" (NYU L-CC) or "avg" (NYU Avg, mean of both trunks)."""
        return features_from_maps({name: self.trunk(name)(x) for name in trunks_of(extractor)}, extractor, pool)


def trunks_of(extractor: str) -> tuple[str, ...]:
    """The trunks an extractor reads: "lcc" the CC trunk, "avg" both."""
    if extractor == "lcc":
        return ("cc",)
    if extractor == "avg":
        return TRUNKS
    raise ValueError(f"unknown NYU extractor {extractor!r} (use one of {EXTRACTORS})")


def features_from_maps(maps: Mapping[str, torch.Tensor], extractor: str, pool: str = "global") -> torch.Tensor:
    """An extractor's features from the trunks' final feature maps (`trunks_of(extractor)`)."""
    pooled = [pool_features(maps[name], pool) for name in trunks_of(extractor)]
    return pooled[0] if len(pooled) == 1 else 0.5 * (pooled[0] + pooled[1])


# --- published checkpoints ------------------------------------------------------------------------

#: Per trunk, the checkpoint prefixes that may hold it, in order of precedence: a shared `cc` copy,
#: else the left-view copy, else the right-view copy. Lower-precedence copies are compared with the
#: chosen one (see `load_nyu_checkpoint`).
_TRUNK_COPIES: dict[str, tuple[str, ...]] = {"cc": ("cc", "l_cc", "r_cc"), "mlo": ("mlo", "l_mlo", "r_mlo")}
_COPY_TRUNK = {copy: trunk for trunk, copies in _TRUNK_COPIES.items() for copy in copies}
_TRUNK_KEY = re.compile(r"^four_view_resnet\.([a-z_]+)\.(.+)$")


@dataclass
class NYULoadReport:
    """What `load_nyu_checkpoint` did besides plain copying."""

    trunk_sources: dict[str, str] = field(default_factory=dict)  # trunk -> checkpoint prefix used
    differing_copies: list[str] = field(default_factory=list)  # keys where per-view copies differ
    sliced: list[str] = field(default_factory=list)  # output-layer tensors cut to their first 4 rows
    ignored: list[str] = field(default_factory=list)  # head keys skipped with trunks_only=True
    filled: list[str] = field(default_factory=list)  # BN num_batches_tracked absent from old files


def published_state_dict(model: NYUImageModel, style: str = "shared") -> dict[str, torch.Tensor]:
    """The model's weights in the published key format (wrap in {"model": ...} to save like the paper).

    style "shared": ``four_view_resnet.cc.*`` / ``four_view_resnet.mlo.*``; style "per_view":
    ``four_view_resnet.{l_cc,r_cc,l_mlo,r_mlo}.*`` (identical copies of the shared trunks).
    """
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    if style == "shared":
        return state
    if style != "per_view":
        raise ValueError(f"unknown style {style!r} (use 'shared' or 'per_view')")
    result: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = _TRUNK_KEY.match(key)
        if match is None:
            result[key] = value
            continue
        trunk, rest = match.groups()
        for side in ("l", "r"):
            result[f"four_view_resnet.{side}_{trunk}.{rest}"] = value.clone()
    return result


def load_nyu_checkpoint(
    model: NYUImageModel,
    state: Mapping[str, Any],
    *,
    source: str = "<state dict>",
    trunks_only: bool = False,
    view_copies: Literal["left", "require_identical"] = "left",
) -> NYULoadReport:
    """Load a published-format NYU checkpoint into `model`, strictly.

    `state` is the unpickled file ({"model": state_dict}) or the state dict itself. Trunk weights may sit
    under ``four_view_resnet.cc`` / ``.mlo`` or under per-view prefixes ``l_cc``, ``r_cc``, ``l_mlo``,
    ``r_mlo``. With per-view copies the left one wins (l_cc -> cc trunk, l_mlo -> mlo trunk); the right
    copies are compared with it and any difference is a warning (``view_copies="left"``) or a
    WeightsError (``view_copies="require_identical"``). An output layer with more than 4 rows
    (Linear(256, N >= 4)) is cut to its first 4 rows. BatchNorm ``num_batches_tracked`` buffers, absent
    from files written by old PyTorch, are not required. Any other missing or unexpected key, or a shape
    mismatch, raises WeightsError listing all of them. With ``trunks_only=True`` only the two trunks
    are loaded and every key outside ``four_view_resnet.`` is ignored (e.g. the view-wise model's heads).
    """
    flat = as_state_dict(state, source)
    report = NYULoadReport()
    translated: dict[str, torch.Tensor] = {}
    original: dict[str, str] = {}
    copies: dict[str, dict[str, dict[str, torch.Tensor]]] = {trunk: {} for trunk in TRUNKS}

    for key, value in flat.items():
        match = _TRUNK_KEY.match(key)
        if match and match.group(1) in _COPY_TRUNK:
            copy, rest = match.groups()
            copies[_COPY_TRUNK[copy]].setdefault(copy, {})[rest] = value
            continue
        if trunks_only and not key.startswith("four_view_resnet."):
            report.ignored.append(key)
            continue
        translated[key] = value
        original[key] = key

    for trunk in TRUNKS:
        present = [copy for copy in _TRUNK_COPIES[trunk] if copy in copies[trunk]]
        if not present:
            continue
        chosen = present[0]
        report.trunk_sources[trunk] = chosen
        for rest, value in copies[trunk][chosen].items():
            target = f"four_view_resnet.{trunk}.{rest}"
            translated[target] = value
            original[target] = f"four_view_resnet.{chosen}.{rest}"
        for other in present[1:]:
            differing = _differing(copies[trunk][chosen], copies[trunk][other], chosen, other)
            report.differing_copies.extend(differing)

    if report.differing_copies:
        reason = (
            f"per-view trunk copies differ in {len(report.differing_copies)} tensor(s); "
            "the shared model keeps the left-view copies (l_cc for CC, l_mlo for MLO)"
        )
        if view_copies == "require_identical":
            raise WeightsError(source, reason, mismatched=report.differing_copies)
        warnings.warn(f"weights {source}: {reason}", stacklevel=2)

    for view in VIEWS:
        for suffix in ("weight", "bias"):
            key = f"output_layer_{view}.fc_layer.{suffix}"
            value = translated.get(key)
            if value is not None and value.dim() >= 1 and value.shape[0] > OUTPUT_ROWS:
                translated[key] = value[:OUTPUT_ROWS]
                report.sliced.append(original[key])

    report.filled = load_state_dict_strict(
        model,
        translated,
        source,
        "checkpoint does not match the NYU image-wise model",
        keep=(lambda key: key.startswith("four_view_resnet.")) if trunks_only else None,
        optional=lambda key: key.endswith(".num_batches_tracked"),  # absent from files of old PyTorch
        names=original,
        given_as="checkpoint",
        hint=f"expected the published format ({IMAGE_WEIGHTS_FILES[model.in_channels]}); "
        "use trunks_only=True to take only the trunks of another NYU checkpoint",
    )
    return report


def _differing(
    chosen: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor], chosen_name: str, other_name: str
) -> list[str]:
    result = []
    for rest in sorted(chosen.keys() | other.keys()):
        a, b = chosen.get(rest), other.get(rest)
        if a is None or b is None:
            result.append(f"four_view_resnet.{other_name if a is None else chosen_name}.{rest}: "
                          f"absent from the {chosen_name if a is None else other_name} copy")
        elif a.shape != b.shape or not torch.equal(a, b):
            result.append(f"four_view_resnet.{other_name}.{rest}: differs from the {chosen_name} copy")
    return result


def build_nyu_model(
    state: Mapping[str, Any] | None = None,
    *,
    seed: int | None = None,
    source: str = "<state dict>",
    trunks_only: bool = False,
    input_noise_std: float = INPUT_NOISE_STD,
    in_channels: int = 1,
) -> NYUImageModel:
    """A NYUImageModel in eval mode (`in_channels` 3 with heatmaps): random init from `seed` (deterministic),
    then `state` if given."""
    with seeded_init(seed):
        model = NYUImageModel(input_noise_std, in_channels)
    if state is not None:
        load_nyu_checkpoint(model, state, source=source, trunks_only=trunks_only)
    return model.eval()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
