"""The SKU plan: brands, their looks, and the SKUs they sell.  No pixels here.

The plan is *prefix-stable*: SKU ``i`` is the same for every ``--skus N > i`` because brands are
generated one after another from their own seeded generators and take consecutive SKU indices.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np

from .variants import VARIANTS
from .vocab import (
    CATEGORIES,
    CODAS,
    ENDINGS,
    LAYOUTS,
    LOGOS,
    NEUTRALS,
    ONSETS,
    PATTERNS,
    PRIMARIES,
    RGB,
    VOWELS,
)

# RNG stream ids: the first key after the seed, so that no two uses share a generator.
S_BRAND, S_CATORDER, S_RANK, S_COUNT, S_TITLE, S_TRAIN, S_QORDER, S_QUERY, S_OTHER = range(1, 10)


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """A generator of its own for ``(seed, *keys)``: output never depends on call order."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *(int(k) for k in keys)])


@dataclass(frozen=True, slots=True)
class BrandLook:
    """What the SKUs of one brand share on the shelf."""

    name: str
    primary: RGB
    secondary: RGB
    accent: RGB
    pattern: str
    logo: str
    layout: str
    upper: bool  # brand name in capitals
    material: RGB  # plastic / glass / cap colour of the brand's packs
    metal: RGB  # lids and rims: silver, gold or brand colour


@dataclass(frozen=True, slots=True)
class SkuSpec:
    index: int
    sku_id: str
    brand: BrandLook
    brand_index: int
    category: str
    product: str
    variant: str
    variant_color: RGB
    size: str
    shape: str  # "family:style", e.g. "bottle:drink"

    @property
    def family(self) -> str:
        return self.shape.split(":", 1)[0]

    @property
    def title(self) -> str:
        return f"{self.brand.name} {self.product} {self.variant} {self.size}"

    @property
    def tags(self) -> list[str]:
        return [
            self.brand.name.lower(),
            self.product.lower(),
            self.variant.lower(),
            self.size,
            self.family,
        ]

    @property
    def key(self) -> int:
        """Stable integer of the look (used to seed drawing details)."""
        return zlib.crc32(self.sku_id.encode("ascii"))


# three vowels in a row, or a vowel pair followed by another vowel sound, read badly
_AWKWARD = re.compile(r"[aeiouy]{3}|(.)\1\1|[aeiou]{2}[aeiou]?(is|ix|ex|ia)$")


def sku_id_for(index: int) -> str:
    return f"D{index:05d}"


def _brand_name(rng: np.random.Generator, taken: set[str]) -> str:
    for _ in range(100):
        parts = []
        for _s in range(int(rng.choice([1, 2, 2, 2, 3]))):
            parts.append(ONSETS[rng.integers(len(ONSETS))] + VOWELS[rng.integers(len(VOWELS))])
        parts.append(CODAS[rng.integers(len(CODAS))] + ENDINGS[rng.integers(len(ENDINGS))])
        name = "".join(parts).capitalize()
        if 4 <= len(name) <= 9 and name not in taken and not _AWKWARD.search(name.lower()):
            return name
    raise RuntimeError("could not find a new brand name")


def _pick(rng: np.random.Generator, seq: tuple | list):  # type: ignore[type-arg]
    return seq[int(rng.integers(len(seq)))]


def _luma(c: RGB) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _brand_look(rng: np.random.Generator, name: str) -> BrandLook:
    primary = _pick(rng, PRIMARIES)
    secondary = _pick(rng, [c for c in PRIMARIES + NEUTRALS if abs(_luma(c) - _luma(primary)) > 60])
    accent = _pick(rng, [c for c in PRIMARIES + NEUTRALS if c not in (primary, secondary)])
    metals = ((200, 200, 205), (212, 175, 90), (60, 60, 65), secondary)
    materials = ((250, 250, 250), primary, secondary, (235, 235, 230), (40, 40, 45))
    return BrandLook(
        name=name.upper() if rng.random() < 0.35 else name,
        primary=primary,
        secondary=secondary,
        accent=accent,
        pattern=_pick(rng, PATTERNS),
        logo=_pick(rng, LOGOS),
        layout=_pick(rng, LAYOUTS),
        upper=bool(rng.random() < 0.5),
        material=_pick(rng, materials),
        metal=_pick(rng, metals),
    )


def _category_of_brand(seed: int, b: int) -> str:
    # Every block of 8 consecutive brands covers the 8 categories once (in a seeded order),
    # so even a small catalog shows many kinds of packs.
    names = list(CATEGORIES)
    order = rng_for(seed, S_CATORDER, b // len(names)).permutation(len(names))
    return names[int(order[b % len(names)])]


def _brand_skus(
    rng: np.random.Generator, seed: int, b: int, look: BrandLook, start: int
) -> list[SkuSpec]:
    category = _category_of_brand(seed, b)
    lines = CATEGORIES[category]
    n_lines = int(rng.integers(1, 3))
    line_ids = rng.choice(len(lines), size=n_lines, replace=False)
    n_skus = int(rng.integers(1, 6))
    # each product line lists its variants in its own seeded order
    groups = [lines[int(li)][3] if len(lines[int(li)]) > 3 else category for li in line_ids]
    orders = [rng.permutation(len(VARIANTS[g])) for g in groups]
    out = []
    for j in range(n_skus):
        line = j % n_lines
        product, shape, sizes = lines[int(line_ids[line])][:3]
        variants = VARIANTS[groups[line]]
        vname, vcolor = variants[int(orders[line][(j // n_lines) % len(variants)])]
        size = sizes[int(rng.integers(len(sizes)))]
        i = start + j
        out.append(
            SkuSpec(i, sku_id_for(i), look, b, category, product, vname, vcolor, size, shape)
        )
    return out


def plan_skus(n: int, seed: int) -> list[SkuSpec]:
    """The first ``n`` SKUs of the catalog of ``seed`` (1-5 SKUs per brand, 1-2 product lines)."""
    if n < 1:
        raise ValueError(f"need at least one SKU, got {n}")
    specs: list[SkuSpec] = []
    taken: set[str] = set()
    b = 0
    while len(specs) < n:
        rng = rng_for(seed, S_BRAND, b)
        name = _brand_name(rng, taken)
        taken.add(name)
        specs.extend(_brand_skus(rng, seed, b, _brand_look(rng, name), len(specs)))
        b += 1
    return specs[:n]
