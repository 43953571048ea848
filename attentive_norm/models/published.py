"""The paper's published figures (arXiv:1908.01259): parameter counts and ImageNet top-1 accuracy.

Used by ``attentive-norm models`` to print measured numbers next to the published ones. A count given
as an ``int`` is exact; a ``float`` is the published value in millions, to three decimals.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Published:
    """What the paper (or the authors' release) reports for one model."""

    params: int | float | None = None
    top1: float | None = None  # ImageNet-1k val, single 224 crop (120 epochs; 150 for MobileNetV2)
    top1_advanced: float | None = None  # 200 epochs + label smoothing + mixup (the "-d" ResNets)


PUBLISHED: dict[str, Published] = {
    "resnet34": Published(params=21.798),
    "resnet34_an": Published(params=21.996),
    "resnet50": Published(params=25_557_032, top1=76.99),
    "resnet50_an": Published(params=25_755_420, top1=78.41),
    "resnet50_se": Published(params=28.072, top1=77.63),
    "resnet101": Published(params=44_549_160, top1=78.67),
    "resnet101_an": Published(params=45_000_644, top1=79.39),
    "resnet50d": Published(params=25_576_264, top1_advanced=78.92),
    "resnet50d_an": Published(params=25_774_652, top1_advanced=80.08),
    "resnet101d": Published(params=44_568_392, top1_advanced=80.29),
    "resnet101d_an": Published(params=45_019_876, top1_advanced=81.15),
    "mobilenetv2": Published(params=3.505, top1=71.31),
    "mobilenetv2_an": Published(params=3_672_760, top1=73.33),
    "densenet121": Published(params=7_978_856),  # "7.98M (torchvision)": torchvision's exact count
    "densenet121_an": Published(params=8.342, top1=77.4),
    "aognet12m": Published(params=12_259_099, top1=77.78, top1_advanced=78.37),
    "aognet12m_an": Published(params=12_373_355, top1=78.72, top1_advanced=79.43),
    "aognet40m": Published(params=40_153_004, top1=80.16, top1_advanced=81.30),
    "aognet40m_an": Published(params=40_388_880, top1=80.67, top1_advanced=81.87),
}


def params_match(measured: int, published: int | float | None) -> bool | None:
    """Whether a measured count equals the published one (exactly, or to 3 decimals in millions)."""
    if published is None:
        return None
    if isinstance(published, int):
        return measured == published
    return round(measured / 1e6, 3) == published
