"""Word pools and small fill-in helpers shared by the demo-data generators (stdlib only).

The SFT tasks and the instruction tasks related to them deliberately draw on the same pools
(urgency cues, order numbers, names), so that what one teaches can transfer to the other.
"""

from __future__ import annotations

import random

FIRST_NAMES = (
    "Ana", "Ben", "Chloe", "Dev", "Elif", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kira",
    "Luca", "Maya", "Nils", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tara", "Umar", "Vera",
    "Wen", "Yusuf", "Zoe", "Leo", "Mina", "Oskar", "Lena", "Raj",
)  # fmt: skip
LAST_NAMES = (
    "Adams", "Berg", "Costa", "Diaz", "Evans", "Fischer", "Garcia", "Hale", "Ito", "Jensen",
    "Khan", "Lopez", "Moreau", "Novak", "Okafor", "Patel", "Quist", "Rossi", "Silva", "Tanaka",
    "Ueda", "Vogel", "Weber", "Young", "Zhang",
)  # fmt: skip
CITIES = ("Leeds", "Porto", "Lyon", "Graz", "Malmo", "Cork", "Ghent", "Turin", "Bergen", "Brno")
SITES = (
    "the Berlin office", "building B", "the London site", "the warehouse", "the Porto hub",
    "the third floor", "reception", "the Lyon branch", "the lab", "the east wing",
)  # fmt: skip
APPS = (
    "Outlook", "Excel", "Teams", "Salesforce", "SAP", "Slack", "Zoom", "Jira", "Chrome",
    "Acrobat", "Tableau", "Workday",
)  # fmt: skip
LAPTOPS = ("ThinkPad", "MacBook", "Dell XPS", "Surface", "HP EliteBook", "Latitude")
ITEMS = ("mug", "lamp", "phone case", "headphones", "vase", "kettle", "blender", "backpack")
EMAIL_DOMAINS = ("example.com", "mail.test", "acme.io", "shopper.net")
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip

# Urgency cues: shared by it_desk (SFT) and urgency_detect (instruction) on purpose.
URGENCY_CUES = {
    "high": (
        "This is urgent.", "I can't work at all.", "The whole team is blocked.",
        "Our client demo starts in ten minutes.", "Please fix this ASAP.",
        "Production is down because of it.", "Everyone on the floor is affected.",
        "Payroll cannot run until this is fixed.", "It's an emergency.",
    ),
    "medium": (
        "Please look at it today.", "It's slowing me down.", "A few colleagues see it too.",
        "Would be good to fix before end of day.", "It happens on and off.",
        "I have a clumsy workaround for now.", "It's getting in the way of my reports.",
        "Could someone check it this afternoon?",
    ),
    "low": (
        "No rush.", "Whenever you have time.", "Sometime this week is fine.",
        "Just a minor annoyance.", "Low priority.", "Not blocking anything.",
        "Whenever someone is free next week.", "It's cosmetic really.",
    ),
}  # fmt: skip


def person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def order_id(rng: random.Random) -> str:
    """An order id as a customer writes it (the same forms the extraction task uses)."""
    n = rng.randint(10000, 999999)
    return rng.choice((f"{n}", f"ORD-{n}", f"A-{n}", f"SO{n}"))


def email(rng: random.Random) -> str:
    first, last = rng.choice(FIRST_NAMES).lower(), rng.choice(LAST_NAMES).lower()
    local = rng.choice((f"{first}.{last}", f"{first[0]}{last}", f"{first}{rng.randint(1, 99)}"))
    return f"{local}@{rng.choice(EMAIL_DOMAINS)}"


def address(rng: random.Random) -> str:
    street = rng.choice(("Elm", "Oak", "Mill", "Station", "Church", "Harbor", "Maple", "King"))
    kind = rng.choice(("Street", "Road", "Lane", "Avenue"))
    return f"{rng.randint(1, 220)} {street} {kind}, {rng.choice(CITIES)}"


def add_typo(rng: random.Random, text: str) -> str:
    """Swap two inner letters of one longer word: the kind of noise real tickets carry."""
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
    if not candidates:
        return text
    i = rng.choice(candidates)
    w = words[i]
    j = rng.randint(1, len(w) - 3)
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    return " ".join(words)


def zipf_index(rng: random.Random, n: int) -> int:
    """An index in ``range(n)`` with weight 1/rank: a few common forms and a long tail."""
    return rng.choices(range(n), weights=[1.0 / (r + 1) for r in range(n)])[0]


def zipf_choice(rng: random.Random, items: tuple[str, ...]) -> str:
    return items[zipf_index(rng, len(items))]


def fill(template: str, slots: dict[str, str]) -> str:
    """Replace ``{name}`` slots; str.format would trip on braces inside filled values."""
    for key, value in slots.items():
        template = template.replace("{" + key + "}", value)
    return template


def number_beside_limit(rng: random.Random, limit: int, within: bool) -> int:
    """A number on the required side of ``limit``: mostly round numbers, some edge cases."""
    r = rng.random()
    if r < 0.08:  # the boundary itself, or just past it
        return limit if within else limit + rng.randint(1, max(1, limit // 10))
    lo, hi = (max(1, limit // 5), limit) if within else (limit + 1, limit * 3)
    x = rng.randint(lo, hi)
    if r < 0.75:  # round it the way people write numbers, staying on the right side
        step = 10 ** max(0, len(str(x)) - 2) * rng.choice((1, 5))
        rounded = (x // step) * step if within else -(-x // step) * step
        x = rounded if lo <= rounded <= hi else x
    return x
