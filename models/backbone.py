"""torchvision ResNet / MobileNetV2 / MobileNetV3 bodies with torchvision's FeaturePyramidNetwork.

``BackboneFPN(images [B, 3, H, W]) -> list of [B, C, H / s, W / s]`` for the strides in ``.strides``
(RetinaNet: P3-P7 = strides 8..128; Faster R-CNN: P2-P6 = strides 4..64).

``pretrained`` is ``None`` (random init), a local file, or a torchvision weights name read from the torch
hub cache (``$TORCH_HOME/hub/checkpoints``) under torchvision's own file name: ``"torchvision"`` or
``"IMAGENET1K_V1"`` (the V1 file, e.g. ``resnet50-0676ba61.pth``, ``mobilenet_v2-b0353104.pth``),
``"IMAGENET1K_V2"`` (``resnet50-11ad3fa6.pth``, ResNet-50/101 only), or that file name itself. By default
nothing is downloaded and a missing file fails with the expected path; ``download=True``
(``model.backbone.download``) fetches a missing torchvision file into the hub cache as torchvision does,
checking the hash prefix in its name.
"""
from __future__ import annotations

import functools
import os
from collections import OrderedDict
from typing import List, Optional, Sequence

import torch
import torchvision
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

RESNETS = {
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (torchvision.models.resnet34, torchvision.models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
    "resnet101": (torchvision.models.resnet101, torchvision.models.ResNet101_Weights.IMAGENET1K_V1),
}
MOBILENETS = {
    "mobilenet_v2": (torchvision.models.mobilenet_v2, torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1),
    "mobilenet_v3_large": (torchvision.models.mobilenet_v3_large, torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1),
    "mobilenet_v3_small": (torchvision.models.mobilenet_v3_small, torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1),
}
# the BatchNorm eps each MobileNet was trained with (torchvision builds V3 with 1e-3, V2 with BatchNorm2d's
# default 1e-5); frozen statistics must be divided by the same sqrt(var + eps) as in training
MOBILENET_BN_EPS = {"mobilenet_v2": 1e-5, "mobilenet_v3_large": 1e-3, "mobilenet_v3_small": 1e-3}


class FrozenStatsBatchNorm2d(nn.Module):
    """BatchNorm with frozen statistics and a trainable affine map: ``y = (x - mean) / sqrt(var + eps) * w + b``
    with ``mean`` / ``var`` fixed buffers (the pretrained file's) and ``w`` / ``b`` parameters.

    This is mmdetection's ``norm_cfg=dict(type='BN', requires_grad=True), norm_eval=True`` (the ALWA
    authors' backbone setting) as one module, so that it holds in train mode too and no ``train()``
    override is needed. It is not a ``_BatchNorm`` subclass on purpose: ``convert_sync_batchnorm`` leaves it
    alone (there are no batch statistics to synchronise). State-dict keys are BatchNorm2d's, less
    ``num_batches_tracked`` (dropped on load, as torchvision's FrozenBatchNorm2d does)."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + shift.reshape(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


# frozen_bn: statistics and affine map frozen (torchvision's detection default); bn_frozen_stats: statistics
# frozen, affine map trained (mmdetection's requires_grad=True, norm_eval=True, what the ALWA configs use);
# bn: ordinary BatchNorm, statistics updated in train mode (training from scratch)
NORMS = {"frozen_bn": FrozenBatchNorm2d, "bn_frozen_stats": FrozenStatsBatchNorm2d, "bn": nn.BatchNorm2d}


def _weights_enum(name: str, tag: str, default):
    """torchvision's weights entry ``tag`` of ``name`` (``"torchvision"`` = ``default``, the V1 entry)."""
    if tag == "torchvision":
        return default
    try:
        return torchvision.models.get_model_weights(name)[tag]
    except KeyError:
        known = [w.name for w in torchvision.models.get_model_weights(name)]
        raise ValueError(f"torchvision has no {tag} weights for {name} (it has {known})") from None


def hub_weights_path(name: str, tag: str, weights_enum) -> str:
    """The hub-cache path of torchvision's ``tag`` weights of ``name`` (``"torchvision"`` = the V1 file)."""
    url = _weights_enum(name, tag, weights_enum).url
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def resolve_pretrained(name: str, pretrained: Optional[str], weights_enum, download: bool = False) -> Optional[dict]:
    """Load a state dict from a local path or the torchvision hub cache; a torchvision weights name missing
    from the cache is downloaded only with ``download=True``."""
    if pretrained is None:
        return None
    hub = os.path.join(torch.hub.get_dir(), "checkpoints")
    is_hub_file = os.sep not in pretrained and not os.path.exists(pretrained) and os.path.isfile(
        os.path.join(hub, pretrained))
    if pretrained == "torchvision" or pretrained.startswith("IMAGENET1K_"):
        path = hub_weights_path(name, pretrained, weights_enum)
        if download and not os.path.isfile(path):
            _download(_weights_enum(name, pretrained, weights_enum).url, path)
        hint = (f"torchvision {pretrained} weights for {name} are expected at {path} (no download is attempted); "
                f"copy the file there, set model.backbone.download=true to fetch it from torchvision's server, "
                f"set model.backbone.pretrained to a local path, or null for random init"
                + ("; for mobilenet_v2, python scripts/fetch_weights.py puts it there offline" if name == "mobilenet_v2"
                   else ""))
    elif is_hub_file:
        path, hint = os.path.join(hub, pretrained), ""
    else:
        path = os.path.expanduser(pretrained)
        hint = f"model.backbone.pretrained points to {path}, which does not exist"
    if not os.path.isfile(path):
        raise FileNotFoundError(hint)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or truncated file
        raise ValueError(f"cannot read pretrained weights {path}: {exc}") from exc
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _download(url: str, path: str) -> None:
    """Fetch torchvision's file ``url`` to ``path`` (its hub-cache path), checking the SHA-256 prefix in its
    name as torchvision's own loading does; the file appears only once complete (torch writes a temporary
    file and moves it)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, path, hash_prefix=_hash_prefix(path), progress=True)
    except Exception as exc:  # no network, proxy, HTTP error, hash mismatch
        raise FileNotFoundError(f"cannot download {url} to {path}: {exc}") from None


def _hash_prefix(path: str) -> Optional[str]:
    """torchvision's file names end in ``-<first hex digits of the SHA-256>.pth``."""
    stem = os.path.splitext(os.path.basename(path))[0]
    tail = stem.rsplit("-", 1)[-1]
    return tail if len(tail) >= 6 and all(c in "0123456789abcdef" for c in tail) else None


class FoldedBN(nn.Module):
    """What remains of a BN with frozen statistics once :class:`FoldedConv2d` applies its affine map: the
    identity, holding the BN's parameters and buffers under the same names (the state dict is unchanged,
    and a loaded checkpoint or pretrained file lands here). ``trainable_affine`` mirrors
    ``FrozenStatsBatchNorm2d`` (weight and bias are parameters) against ``FrozenBatchNorm2d`` (buffers)."""

    def __init__(self, bn: nn.Module):
        super().__init__()
        self.eps = bn.eps
        for name, p in bn.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in bn.named_buffers(recurse=False):
            self.register_buffer(name, b)
        self.trainable_affine = isinstance(self.weight, nn.Parameter)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        state_dict.pop(prefix + "num_batches_tracked", None)  # as the frozen BNs do
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def scale_shift(self):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: Tensor) -> Tensor:
        return x

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, folded into the convolution before it"


class FoldedConv2d(nn.Module):
    """A convolution followed by a BN with frozen statistics, computed as one convolution with the scaled
    weight ``W * s`` and the bias ``b * s + t`` (``s``, ``t``: the BN's scale and shift). Equal to the two
    modules in sequence up to float rounding; it saves the BN's two passes over the activation in the forward
    and one in the backward. The weight scaling (a few million multiplies) is redone every call so that
    loaded or edited BN values always take effect, and a trainable affine map gets its gradient through
    ``s`` and ``t``. It holds the convolution's ``weight`` (and ``bias``) under the same names, so the state
    dict is the unfolded one; the BN itself stays where it was, as a :class:`FoldedBN`. Made by
    :func:`fold_frozen_bn`."""

    def __init__(self, conv: nn.Conv2d, bn: FoldedBN):
        super().__init__()
        if conv.padding_mode != "zeros":
            raise ValueError(f"only zero-padded convolutions fold, got padding_mode={conv.padding_mode!r}")
        self.weight = conv.weight
        self.bias = conv.bias
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size
        self.__dict__["_folded_bn"] = bn  # out of _modules: the BN's state stays where the state dict has it

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = self.__dict__["_folded_bn"].scale_shift()
        bias = shift if self.bias is None else self.bias * scale + shift
        return F.conv2d(x, self.weight * scale.reshape(-1, 1, 1, 1), bias, self.stride, self.padding,
                        self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, folded BN")


_FROZEN_BNS = (FrozenBatchNorm2d, FrozenStatsBatchNorm2d)


def _conv_bn_slots(net: nn.Module):
    """(parent, conv name, bn name) of each conv + BN pair of a torchvision ResNet: the stem, conv<i>/bn<i> of
    every block, and the downsample branch (``0`` / ``1``)."""
    yield net, "conv1", "bn1"
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in layer:
            i = 1
            while hasattr(block, f"conv{i}"):
                yield block, f"conv{i}", f"bn{i}"
                i += 1
            if block.downsample is not None:
                yield block.downsample, "0", "1"


def fold_frozen_bn(net: nn.Module) -> int:
    """Fold every BN with frozen statistics (FrozenBatchNorm2d, FrozenStatsBatchNorm2d) of a torchvision
    ResNet into the convolution before it, in place: each pair is replaced by a :class:`FoldedConv2d` and a
    :class:`FoldedBN` sharing the original parameters and buffers (state-dict keys unchanged); returns the
    number folded."""
    folded = 0
    for parent, conv_name, bn_name in _conv_bn_slots(net):
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        if type(bn) in _FROZEN_BNS and type(conv) is nn.Conv2d:
            remains = FoldedBN(bn)
            setattr(parent, conv_name, FoldedConv2d(conv, remains))
            setattr(parent, bn_name, remains)
            folded += 1
    return folded


class ResNetBody(nn.Module):
    """Stem + layer1..4 of a torchvision ResNet, returning C2..C5 (strides 4, 8, 16, 32)."""

    def __init__(self, name: str, norm: str = "frozen_bn", frozen_stages: int = 1, pretrained: Optional[str] = None,
                 bn_eps: float = 1e-5, fold_bn: bool = True, download: bool = False):
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"unknown ResNet '{name}', choose from {sorted(RESNETS)}")
        fn, weights = RESNETS[name]
        # bn_eps 0: torchvision's COCO detectors run their FrozenBatchNorm2d with eps 0
        net = fn(weights=None, norm_layer=functools.partial(NORMS[norm], eps=bn_eps))
        state = resolve_pretrained(name, pretrained, weights, download)
        if state is not None:
            # the classifier is never used: a file trained for another number of classes loads as well
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            try:
                missing, unexpected = net.load_state_dict(state, strict=False)
            except RuntimeError as exc:  # shape mismatches
                raise ValueError(f"pretrained weights {pretrained} do not fit {name}: {str(exc)[:300]}") from exc
            missing = [k for k in missing if not k.endswith("num_batches_tracked") and not k.startswith("fc.")]
            if missing or [k for k in unexpected if not k.startswith("fc.")]:
                raise ValueError(f"pretrained weights {pretrained} do not fit {name}: missing {missing[:5]}, "
                                 f"unexpected {unexpected[:5]}")
        # folding is faster but rounds differently from a separate BN: fold_bn=False keeps torchvision's
        # FrozenBatchNorm2d arithmetic (bit-equal outputs)
        if norm in ("frozen_bn", "bn_frozen_stats") and fold_bn:
            fold_frozen_bn(net)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        width = 64 if name in ("resnet18", "resnet34") else 256
        self.channels = [width, width * 2, width * 4, width * 8]
        self.strides = [4, 8, 16, 32]
        # frozen_stages = k freezes the stem and the first k stages (mmdetection's convention)
        frozen = [self.stem] + list(self.stages[:frozen_stages]) if frozen_stages >= 0 else []
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)

    def forward(self, x: Tensor) -> List[Tensor]:
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


class MobileNetBody(nn.Module):
    """torchvision MobileNetV2 / V3 features, returning the last block's map at strides 4, 8, 16, 32 (C2-C5;
    MobileNetV2: blocks 3, 6, 13 and the final 1x1 convolution 18, with 24, 32, 96, 1280 channels).

    ``frozen_stages`` follows the ResNet convention: -1 trains everything, 0 freezes the stem (the first
    convolution), k = 1..4 freezes everything up to the end of C(k+1) (stride 2^(k+1))."""

    def __init__(self, name: str, norm: str = "frozen_bn", frozen_stages: int = 0, pretrained: Optional[str] = None,
                 download: bool = False):
        super().__init__()
        if name not in MOBILENETS:
            raise ValueError(f"unknown MobileNet '{name}', choose from {sorted(MOBILENETS)}")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"model.backbone.frozen_stages must be -1 .. 4 for {name}, got {frozen_stages}")
        fn, weights = MOBILENETS[name]
        net = fn(weights=None, norm_layer=functools.partial(NORMS[norm], eps=MOBILENET_BN_EPS[name]))
        state = resolve_pretrained(name, pretrained, weights, download)
        if state is not None:
            features = {k: v for k, v in state.items() if not k.startswith("classifier.")}
            try:
                net.features.load_state_dict({k[len("features."):]: v for k, v in features.items()}, strict=True)
            except RuntimeError as exc:  # missing, unexpected or mis-shaped keys
                raise ValueError(f"pretrained weights {pretrained} do not fit {name}: {str(exc)[:300]}") from exc
        self.features = net.features
        # find, by a dry run, the last block at each stride
        with torch.no_grad():
            x, size, ends = torch.zeros(1, 3, 64, 64), 64, {}
            for i, block in enumerate(self.features.eval()):
                x = block(x)
                ends[size // x.shape[-1]] = (i, x.shape[1])
        self.features.train()
        self.strides = [4, 8, 16, 32]
        self.ends = [ends[s][0] for s in self.strides]
        self.channels = [ends[s][1] for s in self.strides]
        last = 0 if frozen_stages <= 0 else self.ends[frozen_stages - 1]
        for block in self.features[: last + 1] if frozen_stages >= 0 else []:
            for p in block.parameters():
                p.requires_grad_(False)

    def forward(self, x: Tensor) -> List[Tensor]:
        outs = []
        for i, block in enumerate(self.features):
            x = block(x)
            if i in self.ends:
                outs.append(x)
            if i == self.ends[-1]:
                break
        return outs


class P6P7(ExtraFPNBlock):
    """RetinaNet's extra levels: P6 = conv3x3/2 of C5 (or P5), P7 = conv3x3/2 of relu(P6), or of P6 itself
    with ``p7_relu=False`` (mmdetection 2.x's ``relu_before_extra_convs=False``, the ALWA configs)."""

    def __init__(self, in_channels: int, out_channels: int, source: str = "c5", p7_relu: bool = True):
        super().__init__()
        self.source, self.p7_relu = source, p7_relu
        self.p6 = nn.Conv2d(in_channels if source == "c5" else out_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for conv in (self.p6, self.p7):
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, p: List[Tensor], c: List[Tensor], names: List[str]):
        p6 = self.p6(c[-1] if self.source == "c5" else p[-1])
        p7 = self.p7(F.relu(p6) if self.p7_relu else p6)
        return p + [p6, p7], names + ["p6", "p7"]


class BackboneFPN(nn.Module):
    """Body + FPN. ``in_levels`` picks the body outputs (2 = C2 ... 5 = C5); ``extra`` adds levels:
    ``"p6p7"`` (RetinaNet, from C5), ``"p6p7_p5"`` (from P5), ``"maxpool"`` (Faster R-CNN's P6) or ``"none"``;
    ``p7_relu`` applies to the P6P7 variants; ``norm="bn"`` puts a BatchNorm after every FPN convolution
    (torchvision's v2 Faster R-CNN)."""

    def __init__(self, body: nn.Module, out_channels: int = 256, in_levels: Sequence[int] = (3, 4, 5), extra: str = "p6p7",
                 p7_relu: bool = True, norm: str = "none"):
        super().__init__()
        self.body = body
        self.in_levels = list(in_levels)
        in_channels = [body.channels[lvl - 2] for lvl in self.in_levels]
        if extra == "p6p7":
            extra_block, n_extra = P6P7(in_channels[-1], out_channels, "c5", p7_relu), 2
        elif extra == "p6p7_p5":
            extra_block, n_extra = P6P7(in_channels[-1], out_channels, "p5", p7_relu), 2
        elif extra == "maxpool":
            extra_block, n_extra = LastLevelMaxPool(), 1
        elif extra == "none":
            extra_block, n_extra = None, 0
        else:
            raise ValueError(f"unknown FPN extra levels '{extra}'")
        if norm not in ("none", "bn"):
            raise ValueError(f"unknown FPN norm '{norm}', use 'none' or 'bn'")
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=extra_block,
                                         norm_layer=nn.BatchNorm2d if norm == "bn" else None)
        self.strides = [2 ** lvl for lvl in self.in_levels] + [2 ** (self.in_levels[-1] + k + 1) for k in range(n_extra)]
        self.out_channels = out_channels

    def forward(self, images: Tensor) -> List[Tensor]:
        feats = self.body(images)
        selected = OrderedDict((f"c{lvl}", feats[lvl - 2]) for lvl in self.in_levels)
        return list(self.fpn(selected).values())


def build_body(name: str, norm: str, frozen_stages: int, pretrained: Optional[str], bn_eps: float = 1e-5,
               fold_bn: bool = True, download: bool = False) -> nn.Module:
    if name in RESNETS:
        return ResNetBody(name, norm, frozen_stages, pretrained, bn_eps, fold_bn, download)
    if name in MOBILENETS:
        if bn_eps != 1e-5 or not fold_bn:
            raise ValueError(f"model.backbone.bn_eps / fold_bn apply to the ResNet bodies; {name} keeps the BN "
                             f"eps it was trained with ({MOBILENET_BN_EPS[name]}) and is never folded")
        return MobileNetBody(name, norm, frozen_stages, pretrained, download)
    raise ValueError(f"unknown backbone '{name}', choose from {sorted(RESNETS) + sorted(MOBILENETS)}")
