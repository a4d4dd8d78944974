"""Word lists and colour tables of the demo catalog: categories, product lines, variants.

A product line is ``(product name, package shape, sizes)``; the shape names what
:mod:`.packshot` draws (``bottle:drink``, ``can:tall``, ``box:tall``, ...).  Variants carry
the colour that tells sibling SKUs of one brand apart (a lemon soda is yellow, a cherry soda
red), as on a real shelf.
"""

from __future__ import annotations

RGB = tuple[int, int, int]

CATEGORIES: dict[str, list[tuple]] = {  # (product, shape, sizes[, variant group])
    "Drinks": [
        ("Sparkling Water", "bottle:drink", ("500 ml", "1 L", "1.5 L")),
        ("Iced Tea", "bottle:drink", ("500 ml", "1 L")),
        ("Cola", "can:tall", ("330 ml", "500 ml")),
        ("Energy Drink", "can:slim", ("250 ml", "500 ml")),
        ("Fruit Juice", "carton:gable", ("1 L", "330 ml")),
        ("Lemonade", "bottle:drink", ("330 ml", "750 ml")),
        ("Sports Drink", "bottle:drink", ("500 ml", "750 ml")),
        ("Soda", "can:tall", ("330 ml",)),
    ],
    "Snacks": [
        ("Potato Chips", "bag:pillow", ("45 g", "150 g", "200 g")),
        ("Tortilla Chips", "bag:pillow", ("100 g", "200 g")),
        ("Crackers", "box:tall", ("150 g", "250 g")),
        ("Pretzels", "bag:pillow", ("100 g", "175 g")),
        ("Popcorn", "bag:pillow", ("90 g", "150 g")),
        ("Cookies", "box:wide", ("200 g", "300 g"), "Sweet Snacks"),
        ("Granola Bars", "box:wide", ("6 x 25 g", "10 x 25 g"), "Sweet Snacks"),
        ("Nut Mix", "jar:wide", ("150 g", "300 g")),
    ],
    "Cosmetics": [
        ("Face Cream", "jar:cream", ("50 ml", "30 ml")),
        ("Hand Cream", "tube:slim", ("75 ml", "30 ml")),
        ("Body Lotion", "bottle:pump", ("250 ml", "400 ml")),
        ("Serum", "bottle:dropper", ("30 ml", "15 ml")),
        ("Night Cream", "jar:cream", ("50 ml",)),
        ("Sunscreen SPF 50", "tube:wide", ("100 ml", "50 ml")),
        ("Eye Gel", "tube:slim", ("15 ml",)),
        ("Cleansing Milk", "bottle:pump", ("200 ml",)),
    ],
    "Personal Care": [
        ("Shampoo", "bottle:flip", ("250 ml", "400 ml")),
        ("Conditioner", "bottle:flip", ("250 ml", "400 ml")),
        ("Shower Gel", "bottle:flip", ("250 ml", "500 ml")),
        ("Toothpaste", "tube:wide", ("75 ml", "125 ml"), "Oral Care"),
        ("Mouthwash", "bottle:drink", ("500 ml",), "Oral Care"),
        ("Hand Soap", "bottle:pump", ("300 ml",)),
        ("Deodorant", "can:slim", ("150 ml",)),
    ],
    "Household": [
        ("All-Purpose Cleaner", "bottle:spray", ("500 ml", "750 ml")),
        ("Glass Cleaner", "bottle:spray", ("500 ml",)),
        ("Dish Soap", "bottle:flip", ("450 ml", "900 ml")),
        ("Laundry Powder", "box:wide", ("1.2 kg", "2.5 kg")),
        ("Dishwasher Tabs", "box:wide", ("30 tabs", "60 tabs")),
        ("Fabric Softener", "bottle:jug", ("1 L", "2 L")),
        ("Bathroom Spray", "bottle:spray", ("750 ml",)),
    ],
    "Dairy": [
        ("Whole Milk", "carton:gable", ("1 L", "500 ml")),
        ("Yogurt", "jar:cup", ("150 g", "500 g")),
        ("Kefir", "bottle:drink", ("500 ml",)),
        ("Cream Cheese", "jar:cup", ("200 g",)),
        ("Oat Drink", "carton:gable", ("1 L",)),
        ("Skyr", "jar:cup", ("150 g", "450 g")),
        ("Butter", "box:flat", ("250 g",), "Butter"),
    ],
    "Canned Food": [
        ("Tomato Soup", "can:food", ("400 g", "800 g")),
        ("Chickpeas", "can:food", ("400 g",)),
        ("Sweet Corn", "can:food", ("340 g", "160 g")),
        ("Tuna", "can:flat", ("160 g", "3 x 80 g")),
        ("Baked Beans", "can:food", ("415 g",)),
        ("Coconut Milk", "can:food", ("400 ml",)),
        ("Peach Halves", "can:food", ("420 g",)),
    ],
    "Coffee & Tea": [
        ("Ground Coffee", "bag:standup", ("250 g", "500 g"), "Coffee"),
        ("Coffee Beans", "bag:standup", ("500 g", "1 kg"), "Coffee"),
        ("Instant Coffee", "jar:tall", ("100 g", "200 g"), "Coffee"),
        ("Green Tea", "box:tea", ("20 bags", "40 bags")),
        ("Black Tea", "box:tea", ("25 bags", "50 bags")),
        ("Herbal Tea", "box:tea", ("20 bags",)),
        ("Espresso Capsules", "box:wide", ("10 caps", "30 caps"), "Coffee"),
    ],
}

# Category-specific words sellers add to titles.
ATTRIBUTES: dict[str, list[str]] = {
    "Drinks": ["refreshing", "bottled", "carbonated", "no added sugar", "chilled", "beverage"],
    "Snacks": ["crunchy", "crispy", "party size", "gluten free", "snack", "sharing bag"],
    "Cosmetics": ["moisturizing", "anti aging", "dermatologist tested", "vegan", "skincare"],
    "Personal Care": ["gentle", "daily use", "ph balanced", "family", "travel size", "fresh"],
    "Household": ["cleaning", "streak free", "antibacterial", "multi surface", "concentrate"],
    "Dairy": ["fresh", "pasteurized", "high protein", "farm", "creamy", "chilled"],
    "Canned Food": ["ready to eat", "pantry", "no preservatives", "tinned", "easy open"],
    "Coffee & Tea": ["aromatic", "fair trade", "arabica", "loose", "premium blend", "caffeine"],
}

PROMO_WORDS: tuple[str, ...] = (
    "free shipping",
    "hot sale",
    "new arrival",
    "2026",
    "discount",
    "official store",
    "genuine",
    "limited",
    "best seller",
    "gift",
    "sale",
    "original",
    "premium",
    "high quality",
    "wholesale",
    "flash deal",
    "in stock",
    "top rated",
    "clearance",
    "brand new",
    "fast delivery",
    "special offer",
    "bundle",
    "authentic",
    "new",
)

# Pronounceable brand names: onset + vowel (+ coda), two or three syllables, sometimes an ending.
ONSETS = (
    "b",
    "br",
    "c",
    "cr",
    "d",
    "dr",
    "f",
    "fl",
    "g",
    "gr",
    "k",
    "l",
    "m",
    "n",
    "p",
    "pr",
    "r",
    "s",
    "st",
    "t",
    "tr",
    "v",
    "z",
    "sh",
    "ch",
    "j",
    "h",
    "bl",
    "sp",
    "m",
    "l",
    "n",
)
VOWELS = ("a", "e", "i", "o", "u", "a", "o", "e", "ee", "oo", "ai")
CODAS = ("", "", "", "n", "r", "s", "x", "l", "m", "k", "t", "nd", "rt")
ENDINGS = ("", "", "", "a", "o", "ia", "ex", "ix", "ly", "co", "ra", "vo", "ella", "is")

# Brand colour palettes: saturated primaries a designer would pick, and light/dark neutrals.
PRIMARIES: tuple[RGB, ...] = (
    (200, 30, 45),
    (225, 90, 30),
    (245, 180, 20),
    (40, 140, 60),
    (20, 120, 110),
    (25, 90, 180),
    (20, 50, 120),
    (110, 40, 150),
    (200, 50, 120),
    (30, 30, 35),
    (245, 245, 240),
    (120, 70, 40),
    (0, 160, 200),
    (150, 190, 40),
    (90, 100, 110),
    (235, 220, 190),
    (170, 20, 30),
    (60, 40, 100),
    (250, 120, 140),
    (15, 110, 70),
)
NEUTRALS: tuple[RGB, ...] = (
    (250, 250, 248),
    (245, 238, 220),
    (30, 30, 35),
    (60, 60, 70),
    (250, 215, 60),
    (200, 200, 205),
    (255, 255, 255),
    (20, 40, 80),
)
PATTERNS = ("stripes", "dots", "waves", "band", "chevrons", "rays", "checks", "plain", "arcs")
LOGOS = ("circle", "star", "leaf", "diamond", "hexagon", "shield", "drop", "sun", "square")
LAYOUTS = ("logo_top", "text_top", "badge")
