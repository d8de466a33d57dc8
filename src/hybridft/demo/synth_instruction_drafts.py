"""Draft makers of the instruction suite: one function per task type, each drawing one example.

Each maker takes the task's own ``random.Random`` and returns an ``InstructionDraft`` (input,
output, extra phrasing slots); ``synth_instructions`` pairs it with the task's phrasings.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hybridft.demo import synth_vocab as v


@dataclass(frozen=True)
class InstructionDraft:
    input: str
    output: str
    slots: tuple[tuple[str, str], ...] = ()  # extra ``{name}`` slots the phrasings use


WORDS = (
    "apple", "river", "green", "window", "quiet", "market", "silver", "garden", "paper", "cloud",
    "north", "table", "music", "bright", "stone", "letter", "train", "winter", "orange", "bridge",
    "coffee", "little", "forest", "yellow", "doctor", "simple", "summer", "engine", "pocket",
    "camera", "ticket", "planet", "castle", "dinner", "rocket", "basket", "island", "mirror",
    "tiger", "candle", "pencil", "spring", "valley", "jacket", "butter", "harbor", "lemon",
)  # fmt: skip


def _words(rng: random.Random, lo: int, hi: int) -> list[str]:
    return [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]


# --- classification ---------------------------------------------------------------------------

SENTIMENT = {
    "positive": (("great", "excellent", "lovely", "superb", "reliable", "comfortable"),
                 ("Would buy again.", "Love it.", "Five stars.", "Highly recommended.")),
    "negative": (("awful", "terrible", "flimsy", "disappointing", "useless", "noisy"),
                 ("Returning it.", "One star.", "Never again.", "Avoid.")),
    "neutral": (("okay", "average", "so-so", "fine", "standard", "ordinary"),
                ("Nothing special.", "It does the job.", "Three stars.", "No strong feelings.")),
}  # fmt: skip
PRODUCTS = ("blender", "jacket", "phone", "hotel room", "pizza", "laptop bag", "headset", "lamp",
            "novel", "bike", "kettle", "sofa")  # fmt: skip


def sentiment(rng: random.Random) -> InstructionDraft:
    label = rng.choice(tuple(SENTIMENT))
    adjectives, tails = SENTIMENT[label]
    product, adj = rng.choice(PRODUCTS), rng.choice(adjectives)
    text = rng.choice((
        f"The {product} was {adj}. {rng.choice(tails)}",
        f"I bought a {product}. It is {adj}. {rng.choice(tails)}",
        f"{rng.choice(tails)} The {product} is {adj}.",
        f"{adj.capitalize()} {product}, used it for {rng.randint(2, 30)} days.",
    ))  # fmt: skip
    return InstructionDraft(text, label)


TOPICS = {
    "sports": ("{city} United beat {city2} {n}-{m} in the cup",
               "{person} wins the {city} marathon", "Coach quits after {n} straight losses",
               "{city} hosts the swimming finals next {month}"),
    "politics": ("Parliament votes on the {city} transport bill",
                 "Mayor of {city} announces re-election bid", "{person} named finance minister",
                 "Election in {city} set for {month}"),
    "technology": ("New chip doubles phone battery life", "{person} unveils an open AI model",
                   "Startup in {city} raises {n} million for robots",
                   "Software update fixes {n} security flaws"),
    "food": ("Chef {person} opens a noodle bar in {city}", "Recipe: {n}-minute tomato soup",
             "Bakery in {city} sells out of croissants", "{city} street food festival in {month}"),
    "weather": ("Heavy snow expected in {city} tonight", "Heatwave pushes {city} to {n} degrees",
                "Storm warning for the {city} coast", "{month} rainfall in {city} breaks record"),
}  # fmt: skip


def topic(rng: random.Random) -> InstructionDraft:
    label = rng.choice(tuple(TOPICS))
    city, city2 = rng.sample(v.CITIES, 2)
    slots = {"city": city, "city2": city2, "person": v.person(rng), "month": rng.choice(v.MONTHS),
             "n": str(rng.randint(2, 40)), "m": str(rng.randint(0, 5))}  # fmt: skip
    return InstructionDraft(v.fill(rng.choice(TOPICS[label]), slots), label)


SUBJECTS = (
    "the contract draft", "the quarterly report", "the supplier invoice", "the offsite",
    "the client proposal", "the budget sheet", "the delivery schedule", "the hiring plan",
)  # fmt: skip


def urgency(rng: random.Random) -> InstructionDraft:
    label = rng.choice(("low", "medium", "high"))
    cue, subject = v.zipf_choice(rng, v.URGENCY_CUES[label]), rng.choice(SUBJECTS)
    first = rng.choice(v.FIRST_NAMES)
    text = rng.choice((
        f"Re: {subject}. {cue}", f"{cue} It's about {subject}.",
        f"Note from {first}: {subject} needs attention. {cue}",
        f"{first} asked about {subject}. {cue}", f"About {subject} for {first}: {cue}",
    ))  # fmt: skip
    return InstructionDraft(text, label)


LANGUAGES = {
    "english": (("Hello", "Hi", "Good morning", "Excuse me"),
                ("I need", "please send me", "where is", "I am looking for"),
                ("my order", "the invoice", "a new password", "the receipt", "my package",
                 "the manager", "a refund", "the tracking number")),
    "spanish": (("Hola", "Buenos días", "Perdone", "Buenas tardes"),
                ("necesito", "por favor envíeme", "dónde está", "estoy buscando"),
                ("mi pedido", "la factura", "una nueva contraseña", "el recibo", "mi paquete",
                 "al gerente", "un reembolso", "el número de seguimiento")),
    "french": (("Bonjour", "Salut", "Excusez-moi", "Bonsoir"),
               ("j'ai besoin de", "envoyez-moi s'il vous plaît", "où est", "je cherche"),
               ("ma commande", "la facture", "un nouveau mot de passe", "le reçu", "mon colis",
                "le responsable", "un remboursement", "le numéro de suivi")),
    "german": (("Hallo", "Guten Morgen", "Entschuldigung", "Guten Tag"),
               ("ich brauche", "bitte senden Sie mir", "wo ist", "ich suche"),
               ("meine Bestellung", "die Rechnung", "ein neues Passwort", "den Beleg",
                "mein Paket", "den Manager", "eine Rückerstattung", "die Sendungsnummer")),
}  # fmt: skip


def language(rng: random.Random) -> InstructionDraft:
    label = rng.choice(tuple(LANGUAGES))
    greetings, requests, objects = LANGUAGES[label]
    tail = rng.choice(("", f" ({v.order_id(rng)})", f" - {rng.choice(v.FIRST_NAMES)}", "!", "?"))
    text = f"{rng.choice(greetings)}, {rng.choice(requests)} {rng.choice(objects)}{tail}"
    return InstructionDraft(text, label)


# --- extraction -------------------------------------------------------------------------------


def _phone(rng: random.Random) -> str:
    return f"0{rng.randint(100, 999)}-{rng.randint(1000, 9999)}"


def order_number(rng: random.Random) -> InstructionDraft:
    o, n, m = v.order_id(rng), rng.randint(2, 60), rng.randint(1, 9)
    hash_o = rng.choice((o, "#" + o))
    text = rng.choice((
        f"Hi, my order {hash_o} had {n} items but only {m} arrived.",
        f"Call me on {_phone(rng)} about order {hash_o}, please.",
        f"Re: {hash_o} - the invoice shows {n} dollars instead of {n + m}.",
        f"I placed {hash_o} on {rng.choice(v.MONTHS)} {m} and I am still waiting.",
        f"Ticket INC{rng.randint(1000, 9999)} was opened {n} days ago for order {hash_o}.",
    ))  # fmt: skip
    return InstructionDraft(text, o)


def date(rng: random.Random) -> InstructionDraft:
    y, mo, d = rng.randint(2019, 2027), rng.randint(1, 12), rng.randint(1, 28)
    month = v.MONTHS[mo - 1]
    written = rng.choice((f"{month} {d}, {y}", f"{d} {month} {y}", f"{y}-{mo:02d}-{d:02d}"))
    text = rng.choice((
        f"The meeting moved to {written}.", f"Invoice due {written}, {rng.randint(2, 9)} pages.",
        f"{v.person(rng)} starts on {written} in {rng.choice(v.CITIES)}.",
        f"Delivery is expected on {written} before noon.",
    ))  # fmt: skip
    return InstructionDraft(text, f"{y}-{mo:02d}-{d:02d}")


def email(rng: random.Random) -> InstructionDraft:
    e = v.email(rng)
    text = rng.choice((
        f"Please reply to {e} by Friday.", f"Contact {v.person(rng)} at {e} or call {_phone(rng)}.",
        f"My new email is {e}, the old one was closed.",
        f"Send the invoice to {e} and copy {v.person(rng)}.",
    ))  # fmt: skip
    return InstructionDraft(text, e)


def person(rng: random.Random) -> InstructionDraft:
    name = v.person(rng)
    text = rng.choice((
        f"Please forward this to {name} in {rng.choice(v.CITIES)}.",
        f"{name} will lead the {rng.choice(v.APPS)} rollout.",
        f"The meeting in {rng.choice(v.CITIES)} with {name} moved to {rng.choice(v.MONTHS)}.",
        f"Ask {name} about order {v.order_id(rng)}.",
    ))  # fmt: skip
    return InstructionDraft(text, name)


def amount(rng: random.Random) -> InstructionDraft:
    amount, n = rng.choice((rng.randint(10, 999), rng.randint(1000, 20000))), rng.randint(2, 90)
    written = rng.choice((f"${amount:,}", f"${amount}", f"{amount} dollars"))
    text = rng.choice((
        f"The invoice total is {written} and it is due in {n} days.",
        f"{v.person(rng)} spent {written} on {n} licenses.",
        f"Approve {written} for the {rng.choice(v.CITIES)} trip ({n} nights)?",
        f"A gift worth {written} arrived on {rng.choice(v.MONTHS)} {n % 28 + 1}.",
    ))  # fmt: skip
    return InstructionDraft(text, str(amount))


# --- rewriting --------------------------------------------------------------------------------


def uppercase(rng: random.Random) -> InstructionDraft:
    text = " ".join(_words(rng, 3, 7))
    return InstructionDraft(text, text.upper())


def reverse(rng: random.Random) -> InstructionDraft:
    words = _words(rng, 3, 7)
    return InstructionDraft(" ".join(words), " ".join(reversed(words)))


VERBS = ("send me", "check", "fix", "update", "cancel", "resend", "explain", "find")
OBJECTS = (
    "the invoice", "my order", "my account", "the report", "the tracking link", "my password",
    "the contract", "the receipt", "the delivery date", "the refund",
)  # fmt: skip
WHENS = ("", " today", " by Friday", " this week")


def polite(rng: random.Random) -> InstructionDraft:
    vp = f"{rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(WHENS)}"
    blunt = rng.choice((f"{vp.capitalize()} now.", f"{vp.capitalize()}. Do it.",
                        f"I want you to {vp}.", f"Just {vp}!", f"You need to {vp}.",
                        f"{vp.capitalize()}, fast."))  # fmt: skip
    return InstructionDraft(blunt, f"Could you please {vp}? Thank you.")


FILLERS = ("just", "really", "basically", "actually", "literally", "honestly", "totally")
BASES = ("I need the {o}{w}", "can you send the {o}{w}", "we should check the {o}{w}",
         "please update the {o}{w}", "they want the {o}{w}")  # fmt: skip


def filler(rng: random.Random) -> InstructionDraft:
    obj = rng.choice(("report", "invoice", "contract", "budget", "schedule", "draft", "slides"))
    words = v.fill(rng.choice(BASES), {"o": obj, "w": rng.choice(WHENS)}).split()
    noisy = list(words)
    for _ in range(rng.randint(1, 3)):
        noisy.insert(rng.randint(1, len(noisy) - 1), rng.choice(FILLERS))
    words[0] = noisy[0] = words[0].capitalize()
    return InstructionDraft(" ".join(noisy) + ".", " ".join(words) + ".")


# --- short QA ---------------------------------------------------------------------------------


def arithmetic(rng: random.Random) -> InstructionDraft:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    if rng.random() < 0.5:
        return InstructionDraft(f"{a} + {b}", str(a + b))
    a, b = max(a, b), min(a, b)
    return InstructionDraft(f"{a} - {b}", str(a - b))


HEADS = ("Zor", "Mel", "Tar", "Vel", "Kas", "Dun", "Ori", "Bel", "Sar", "Nem", "Quo", "Lin")
TAILS = ("via", "land", "aria", "heim", "ovia", "stan", "ora", "mark")
TOWNS = ("Mellin", "Tarsk", "Quor", "Aldby", "Vesh", "Pirano", "Holt", "Dravo", "Kessa", "Umbra",
         "Lorn", "Fask", "Yelm", "Corvi", "Brast", "Olde")  # fmt: skip


def capital(rng: random.Random) -> InstructionDraft:
    countries = rng.sample([h + t for h in HEADS for t in TAILS], 2)
    *capitals, port = rng.sample(TOWNS, 3)
    facts = [f"The capital of {c} is {k}." for c, k in zip(countries, capitals, strict=True)]
    rng.shuffle(facts)  # a distractor city of the asked country goes anywhere
    facts.insert(rng.randint(0, 2), f"The largest port of {countries[0]} is {port}.")
    return InstructionDraft(" ".join(facts), capitals[0], (("country", countries[0]),))


OWNED = ("bike", "car", "boat", "kite", "piano", "tent")
COLOURS = ("red", "blue", "green", "black", "white", "yellow")


def yes_no(rng: random.Random) -> InstructionDraft:
    people = rng.sample(v.FIRST_NAMES, 3)
    things = [(rng.choice(COLOURS), rng.choice(OWNED)) for _ in people]
    context = " ".join(f"{p} owns a {c} {t}." for p, (c, t) in zip(people, things, strict=True))
    i = rng.randrange(3)
    colour, thing = things[i]
    answer = rng.choice(("yes", "no"))
    if answer == "no":  # change the colour or the thing, to one person i does not own
        if rng.random() < 0.5:
            colour = rng.choice([c for c in COLOURS if c != colour])
        else:
            thing = rng.choice([t for t in OWNED if t != thing])
    question = f"Does {people[i]} own a {colour} {thing}?"
    return InstructionDraft(context, answer, (("question", question),))


UNITS = ("days", "hours", "dollars")


def threshold(rng: random.Random) -> InstructionDraft:
    limit = rng.choice((10, 24, 30, 48, 60, 72, 90, 100, 120, 180, 250, 365, 500, 1000, 5000))
    answer = rng.choice(("yes", "no"))
    x, unit = v.number_beside_limit(rng, limit, within=answer == "yes"), rng.choice(UNITS)
    shown = (lambda n: f"${n}") if unit == "dollars" else (lambda n: f"{n} {unit}")
    text = rng.choice((
        f"Limit: at most {shown(limit)}. Observed: {shown(x)}.",
        f"The cap is {shown(limit)}; the case shows {shown(x)}.",
        f"Maximum allowed: {shown(limit)}. Actual: {shown(x)}.",
        f"Observed {shown(x)} against a limit of {shown(limit)}.",
    ))  # fmt: skip
    return InstructionDraft(text, answer)
