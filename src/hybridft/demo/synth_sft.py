"""The three labelled (SFT) demo tasks: IT service desk, customer support, policy compliance.

Each label is decided by cues in the text that a tiny model can learn, with a long tail of rare
cues, distractors and noise so that more labelled examples keep helping.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from hybridft.demo import synth_vocab as v


@dataclass(frozen=True)
class SftDraft:
    """One generated labelled example before splitting (prompt text, gold label, reply maker)."""

    prompt: str
    label: str
    template: int
    reply: Callable[[str], str] | None = None  # lines after the label, for a given label

    def completion(self, label: str) -> str:
        """First line is the label (the house convention); a reply or clause may follow."""
        return label if self.reply is None else f"{label}\n{self.reply(label)}"


@dataclass(frozen=True)
class SftTask:
    name: str
    cluster: str
    domain: str
    skills: tuple[str, ...]
    labels: tuple[str, ...]
    make: Callable[[random.Random], SftDraft]
    mislabel: Callable[[random.Random, str], str | None]  # a plausible wrong label, or None


# --- IT service desk: ticket -> "team urgency" ------------------------------------------------

TEAMS = ("network", "identity", "hardware", "software", "facilities")
URGENCIES = ("low", "medium", "high")

ISSUES = {
    "network": (
        "the wifi keeps dropping", "I can't connect to the VPN from {site}",
        "the ethernet port at my desk is dead", "websites time out, looks like DNS",
        "the proxy blocks {app}", "huge packet loss on video calls",
        "the router in {site} is blinking red", "no internet in {site}",
        "the firewall blocks the port {app} needs", "bandwidth is terrible since this morning",
        "the guest network rejects every device", "latency to the file server is awful",
    ),
    "identity": (
        "my password expired and I can't log in", "my account is locked after too many tries",
        "the MFA code never arrives on my phone", "SSO loops forever when I open {app}",
        "I need access to the finance-reports group", "my authenticator app was reset",
        "permissions on the shared drive are missing", "login to {app} says invalid credentials",
        "new starter {person} needs an account", "I lost my security token",
        "my username was changed after the merger", "the directory shows my old manager",
    ),
    "hardware": (
        "my {laptop} won't turn on", "the screen on my {laptop} is flickering",
        "the keyboard has sticky keys", "the docking station doesn't charge my {laptop}",
        "the printer in {site} is jammed", "my monitor shows no signal",
        "the battery drains in an hour", "the webcam is not detected",
        "my headset crackles", "the hard drive makes a clicking noise",
        "the trackpad stopped responding", "the fan on my {laptop} is very loud",
    ),
    "software": (
        "{app} crashes when I open a file", "I need {app} installed",
        "the license for {app} expired", "{app} shows error {code}",
        "the latest update broke {app}", "{app} freezes on startup",
        "macros stopped working in {app}", "I can't export reports from {app}",
        "the plugin for {app} is missing", "{app} keeps asking me to reinstall",
        "{app} is stuck on an old version", "the add-in in {app} throws an exception",
    ),
    "facilities": (
        "the air conditioning in {site} is broken", "the lights in {site} flicker",
        "the meeting room door won't lock", "my chair is broken",
        "the heating is off in {site}", "the elevator is stuck again",
        "there's a leak in the kitchen", "my desk needs moving to {site}",
        "the parking gate won't open", "the badge reader at the entrance is dead",
        "the blinds in {site} are jammed", "the coffee machine flooded the floor",
    ),
}  # fmt: skip
MENTIONS = {  # a thing from each team, for "X is fine though" distractors
    "network": ("the wifi", "the VPN", "the network"),
    "identity": ("my password", "my login", "my account"),
    "hardware": ("my laptop", "the printer", "my monitor"),
    "software": ("Outlook", "Excel", "the app"),
    "facilities": ("the heating", "the lights", "my desk"),
}
TICKET_TEMPLATES = (
    "Hi, {issue}. {urgency}{extra}",
    "{person} here from {site}: {issue}. {urgency}{extra}",
    "{issue}. {urgency}{extra} Thanks, {first}",
    "Hello team, {issue} since {when}. {urgency}{extra}",
    "{urgency} {issue_cap}.{extra}",
    "Subject: help needed. {issue_cap}. {urgency}{extra}",
    "Quick one: {issue}.{extra} {urgency}",
)
EXTRAS = (
    " I restarted twice already.", " Using my {laptop} as usual.", " Ticket ref {ref}.",
    " My manager {person} knows.", " {mention} is fine though.", " Not sure it's {mention}.",
    " {app} was open at the time.",
)  # fmt: skip


def _ticket(rng: random.Random) -> SftDraft:
    team, urgency = rng.choice(TEAMS), rng.choice(URGENCIES)
    other = rng.choice([t for t in TEAMS if t != team])
    slots = {
        "site": rng.choice(v.SITES),
        "app": rng.choice(v.APPS),
        "laptop": rng.choice(v.LAPTOPS),
        "person": v.person(rng),
        "code": f"0x{rng.randint(0x1000, 0xFFFF):X}",
        "ref": f"INC{rng.randint(1000, 99999)}",
        "mention": rng.choice(MENTIONS[other]),
        "when": rng.choice(("Monday", "yesterday", "this morning", "the update", "lunch")),
    }
    issue = v.fill(v.zipf_choice(rng, ISSUES[team]), slots)
    extra = v.fill(rng.choice(EXTRAS), slots) if rng.random() < 0.45 else ""
    k = rng.randrange(len(TICKET_TEMPLATES))
    text = v.fill(
        TICKET_TEMPLATES[k],
        {
            **slots,
            "issue": issue,
            "issue_cap": issue[0].upper() + issue[1:],
            "urgency": _urgency_text(rng, urgency),
            "extra": extra,
            "first": slots["person"].split()[0],
        },
    )
    text = _noise(rng, text)
    return SftDraft(f"Ticket: {text}\nRoute to team and urgency.", f"{team} {urgency}", k)


def _urgency_text(rng: random.Random, urgency: str) -> str:
    """The urgency cue; sometimes after an earlier, different one (the latest one counts)."""
    cue = v.zipf_choice(rng, v.URGENCY_CUES[urgency])
    if rng.random() > 0.15:
        return cue
    before = rng.choice(v.URGENCY_CUES[rng.choice([u for u in URGENCIES if u != urgency])])
    return f"Earlier: {before.lower()} Update: {cue}"


def _ticket_mislabel(rng: random.Random, label: str) -> str:
    team, urgency = label.split()
    if rng.random() < 0.5:
        return f"{rng.choice([t for t in TEAMS if t != team])} {urgency}"
    return f"{team} {rng.choice([u for u in URGENCIES if u != urgency])}"


# --- Customer support: message -> intent + templated reply ------------------------------------

INTENT_CUES = {
    "refund": (
        "I want my money back for order {o}", "please refund order {o}",
        "can I get a refund on order {o}?", "I returned order {o} and still have no refund",
        "requesting reimbursement for order {o}", "I changed my mind about {o}, money back please",
        "where is the refund for order {o}?", "please reverse the charge for {o}",
        "put the money for {o} back on my card", "I sent {o} back, when do I get paid back?",
    ),
    "shipping_status": (
        "where is my order {o}?", "order {o} hasn't arrived yet",
        "tracking for order {o} hasn't updated in days", "when will order {o} be delivered?",
        "has order {o} shipped yet?", "my package {o} is late", "is {o} still in transit?",
        "no sign of {o} so far", "the courier lost track of {o}", "how long until {o} gets here?",
    ),
    "cancel": (
        "please cancel order {o}", "I don't want order {o} anymore, stop it",
        "cancel {o} before it ships", "I ordered {o} by mistake, please cancel it",
        "call off order {o}", "scrap my order {o}", "I need order {o} cancelled",
        "withdraw my purchase {o}", "please void order {o}", "don't process {o} after all",
    ),
    "change_address": (
        "I moved, please ship order {o} to {addr}", "update the delivery address for {o} to {addr}",
        "wrong address on order {o}, it should be {addr}", "can you send order {o} to {addr}?",
        "deliver {o} to {addr} instead", "new address for order {o}: {addr}",
        "{o} must go to {addr} now", "please redirect {o} to {addr}",
    ),
    "damaged_item": (
        "order {o} arrived broken", "the {item} in order {o} is cracked",
        "the box for {o} was crushed and the {item} is damaged", "the {item} from {o} came dented",
        "order {o}: the {item} is shattered", "the {item} in {o} has a big scratch",
        "half of order {o} was smashed", "the {item} from {o} doesn't work out of the box",
        "{o} came with a torn {item}",
    ),
    "account_access": (
        "I can't log into my account, email {email}",
        "the password reset for {email} never arrives", "my account {email} is locked",
        "I'm locked out of my account ({email})",
        "the two-factor code doesn't work for {email}", "sign-in fails for {email}",
        "the site says my login {email} does not exist",
        "I can't get past the login page ({email})",
    ),
}  # fmt: skip
REPLIES = {
    "refund": "I've started a refund for order {o}; it reaches you in 5-7 business days.",
    "shipping_status": "Order {o} is on its way; the tracking link is in your confirmation email.",
    "cancel": "Order {o} is cancelled and you will not be charged.",
    "change_address": "The delivery address for order {o} is now {addr}.",
    "damaged_item": "Sorry that order {o} arrived damaged; a replacement ships today.",
    "account_access": "We've sent a password reset link to {email}.",
}
# Context that mentions another intent's words without changing the intent; the rule is the
# request itself (and damage > cancel > refund where a message asks for two things).
CONFUSERS = {
    "refund": (" The parcel arrived last week.", " I already cancelled the rest.",
               " Shipping was quick at least."),
    "shipping_status": (" If it's lost I may cancel.", " It should go to {addr}.",
                        " I hope it doesn't arrive broken."),
    "cancel": (" Please refund me if you already charged.", " It hasn't shipped yet, right?",
               " Don't send it to my old address."),
    "change_address": (" It hasn't shipped yet, I hope.", " Don't cancel it though.",
                       " Tracking still shows the old one."),
    "damaged_item": (" A refund or replacement, whatever is faster.", " Where do I send it back?",
                     " I may cancel future orders."),
    "account_access": (" I need to check order {o}.", " I can't see my refund status.",
                       " My orders page is blank."),
}  # fmt: skip
NEGATED = {  # "not this intent": uses the intent's own words, so words alone can mislead
    "refund": " I don't want a refund.",
    "shipping_status": " I know it has shipped.",
    "cancel": " No need to cancel.",
    "change_address": " The address is right.",
    "damaged_item": " Nothing arrived damaged.",
    "account_access": " My login works fine.",
}
WANTS = {  # "I want A, not B": the same words either way round, only the order decides
    "refund": "my money back",
    "shipping_status": "a status update",
    "cancel": "the order cancelled",
    "change_address": "a new delivery address",
    "damaged_item": "a replacement for the broken item",
    "account_access": "a login reset",
}
OPENERS = ("", "Hi, ", "Hello, ", "Good morning, ", "Hey, ")
CLOSERS = (
    "", " Thanks.", " Thank you!", " Regards, {name}.", " Cheers.", " - {name}",
    " - {name} ({email})", " Reach me at {email}.",
)  # fmt: skip
INTENTS = tuple(INTENT_CUES)
_SWAPPABLE = ("refund", "shipping_status", "cancel", "damaged_item")  # replies need only {o}


def _support(rng: random.Random) -> SftDraft:
    intent = rng.choice(INTENTS)
    name = v.person(rng).split()[0]
    slots = {"o": v.order_id(rng), "email": v.email(rng), "addr": v.address(rng)}
    k = v.zipf_index(rng, len(INTENT_CUES[intent]))
    cue = INTENT_CUES[intent][k]
    if rng.random() < 0.15:
        other = rng.choice([i for i in INTENTS if i not in (intent, "account_access")])
        what = "my account {email}" if intent == "account_access" else "order {o}"
        cue, k = f"I want {WANTS[intent]}, not {WANTS[other]}, for {what}", len(INTENT_CUES[intent])
    if "{o}" in cue and rng.random() < 0.3:
        cue = cue.replace("{o}", "#{o}", 1)
    body = cue + ("" if cue[-1] in ".?!)" else ".")
    if rng.random() < 0.35:
        body += rng.choice(CONFUSERS[intent])
    if rng.random() < 0.3:
        body += NEGATED[rng.choice([i for i in INTENTS if i != intent])]
    text = rng.choice(OPENERS) + body + rng.choice(CLOSERS)
    # noise first, fill after: the order id, email and address the reply repeats stay exact
    text = _noise(rng, text[0].upper() + text[1:])
    text = v.fill(text, {**slots, "item": rng.choice(v.ITEMS), "name": name})
    return SftDraft(
        f"Customer message: {text}\nGive the intent and a reply.",
        intent,
        k,
        lambda label: v.fill(REPLIES[label], slots),
    )


def _support_mislabel(rng: random.Random, label: str) -> str | None:
    if label not in _SWAPPABLE:
        return None
    return rng.choice([i for i in _SWAPPABLE if i != label])


# --- Compliance: scenario -> compliant / non-compliant + deciding clause -----------------------


@dataclass(frozen=True)
class Clause:
    number: str
    title: str
    limit: int  # compliant iff the value in the scenario is <= limit
    scenarios: tuple[str, ...]  # each has a {v} slot


POLICY = (
    Clause("2.1", "expense approval", 5000, (
        "{person} filed a ${v} expense approved only by their manager.",
        "A manager alone signed off a ${v} travel claim.",
        "The team lead approved a ${v} software purchase without a director.",
        "{person}'s ${v} conference bill has manager approval only.",
    )),
    Clause("3.4", "data retention", 365, (
        "Customer records in {system} are kept for {v} days.",
        "We delete closed-account data after {v} days.",
        "Call recordings in {system} are stored for {v} days.",
        "Old invoices of former clients stay in {system} for {v} days.",
    )),
    Clause("4.2", "password rotation", 90, (
        "{person}'s password was last changed {v} days ago.",
        "The service account for {system} has not rotated its password in {v} days.",
        "Admin passwords on {system} are rotated every {v} days.",
        "{person} has used the same password for {v} days.",
    )),
    Clause("5.1", "vendor gifts", 100, (
        "{person} accepted a gift worth ${v} from a supplier.",
        "A vendor sent a ${v} hamper to {person}, who kept it.",
        "{person} took concert tickets worth ${v} from a bidder.",
        "A supplier paid for {person}'s ${v} dinner.",
    )),
    Clause("6.3", "incident reporting", 72, (
        "A phishing incident was reported {v} hours after discovery.",
        "{person} told security about the lost laptop {v} hours later.",
        "A data leak in {system} reached the security team after {v} hours.",
        "A malware alert on {system} was escalated {v} hours after it fired.",
    )),
    Clause("7.2", "training deadline", 30, (
        "{person} finished compliance training {v} days after joining.",
        "The new hire completed the mandatory course on day {v}.",
        "{person} did the security awareness module {v} days after starting.",
        "Onboarding training for {person} was done after {v} days.",
    )),
)  # fmt: skip
SYSTEMS = ("the CRM", "the HR system", "the billing database", "SAP", "the data lake", "Salesforce")
QUESTIONS = ("Is this compliant?", "Compliant or not?", "Does this follow the policy?", "")
COMPLIANCE_LABELS = ("compliant", "non-compliant")


def _compliance(rng: random.Random) -> SftDraft:
    label = rng.choice(COMPLIANCE_LABELS)
    clause = rng.choice(POLICY)
    k = rng.randrange(len(clause.scenarios))
    value = v.number_beside_limit(rng, clause.limit, within=label == "compliant")
    text = v.fill(
        clause.scenarios[k],
        {"v": str(value), "person": v.person(rng), "system": rng.choice(SYSTEMS)},
    )
    question = rng.choice(QUESTIONS)
    prompt = f"Policy check: {text}" + (f" {question}" if question else "")
    return SftDraft(prompt, label, k, lambda _label: f"clause: {clause.number} {clause.title}")


def _compliance_mislabel(rng: random.Random, label: str) -> str:
    return "compliant" if label == "non-compliant" else "non-compliant"


# --- shared helpers ------------------------------------------------------------------------------


def _noise(rng: random.Random, text: str) -> str:
    if rng.random() < 0.08:
        text = v.add_typo(rng, text)
    if rng.random() < 0.08:
        text = text.lower()
    return text


SFT_TASKS = (
    SftTask(
        "it_desk",
        "classification",
        "it",
        ("routing", "urgency", "keyword_cues"),
        tuple(f"{t} {u}" for t in TEAMS for u in URGENCIES),
        _ticket,
        _ticket_mislabel,
    ),
    SftTask(
        "support",
        "classification",
        "support",
        ("intent", "order_number", "templated_reply"),
        INTENTS,
        _support,
        _support_mislabel,
    ),
    SftTask(
        "compliance",
        "qa",
        "compliance",
        ("threshold_comparison", "numbers", "policy_lookup"),
        COMPLIANCE_LABELS,
        _compliance,
        _compliance_mislabel,
    ),
)
