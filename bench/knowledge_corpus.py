"""A generated product-documentation corpus with known answers, for bench/knowledge.py.

Each page documents one fictional product ("Vexor Q7 kettle") in Markdown sections. Products share
brands, model codes and section layouts, so a question can only be answered from the one fragment
whose sentence holds the fact about that product: "How heavy is the Vexor Q7?" must find "The Vexor
Q7 weighs 812 grams ..." among a thousand pages that each say what their product weighs. Questions
are worded differently from the facts (heavy / weighs, cost / sells for) so paraphrase matters too.
Deterministic for a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SYLLABLES = "vex or quil lan dra mo ti ka zen bri so lu fen ar cor nia pex tal vo rin mar sel".split()
CATEGORIES = ["kettle", "blender", "desk lamp", "headphones", "drone", "scooter", "router", "camera", "smartwatch",
              "speaker", "air purifier", "toaster", "e-reader", "projector", "heater", "thermostat"]
CITIES = ["Lisbon", "Tallinn", "Osaka", "Porto", "Ghent", "Bergen", "Cork", "Brno", "Turku", "Lyon", "Graz",
          "Malmo", "Bilbao", "Split", "Riga", "Krakow", "Aarhus", "Genoa", "Basel", "Leeds"]
MAKERS = ["Northwind Labs", "Halcyon Works", "Bright Anvil", "Cobalt & Pine", "Ferro Studio", "Lumen Forge",
          "Quiet Harbor", "Red Kestrel", "Sable Design", "Tidewater Co"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
ACCESSORIES = ["travel case", "spare filter", "charging dock", "wall mount", "cleaning brush", "USB-C cable",
               "remote control", "carry strap", "screen protector", "power adapter", "tripod", "spare blade"]
COLOURS = ["graphite", "sand", "forest green", "coral", "midnight blue", "white", "copper"]
FILLER = [
    "Many owners keep the {name} on a shelf where the whole family can reach it.",
    "The {name} was reviewed favourably by several independent magazines last year.",
    "Reviewers liked how quiet the {name} is compared with older {category} models.",
    "The {name} pairs well with other products from the same range.",
    "Read this section before you use the {name} for the first time.",
    "Keep the {name} away from open flames and direct sunlight.",
    "Store the original packaging of the {name} in case you move house.",
    "The {name} is one of the most popular {category} models in its price range.",
]


@dataclass(frozen=True, slots=True)
class Question:
    text: str
    needle: str  # the fact sentence: a fragment answers the question when it holds this text
    kind: str


@dataclass(frozen=True, slots=True)
class Page:
    name: str  # the file name, e.g. "vexor-q7.md"
    markdown: str
    questions: list[Question]


# Each fact: its section, its sentence, and questions worded the way people ask.
FACTS: dict[str, tuple[str, str, list[str]]] = {
    "battery": ("Battery", "The {name} runs for {hours} hours on one charge and recharges fully in {minutes} minutes.",
                ["How many hours does the {name} last before it needs charging?",
                 "What battery life does the {name} have?",
                 "How long does it take to recharge the {name}?"]),
    "warranty": ("Warranty", "The {name} is covered by a {years}-year warranty, and claims go to {email}.",
                 ["How long is the {name} guaranteed for?",
                  "Where do I send a warranty claim for my {name}?"]),
    "origin": ("Overview", "The {name} is designed by {maker} and assembled in {city}.",
               ["Which city is the {name} built in?",
                "Who designed the {name}?"]),
    "size": ("Specifications", "The {name} weighs {grams} grams and measures {width} by {depth} centimetres.",
             ["How heavy is the {name}?",
              "What are the dimensions of the {name}?"]),
    "firmware": ("Firmware", "The latest firmware for the {name} is version {version}, released in {month}.",
                 ["Which software version is current for the {name}?",
                  "When did the newest {name} update come out?"]),
    "support": ("Support", "Phone support for the {name} is open {days} from {start}:00 to {end}:00 on extension "
                           "{extension}.",
                ["What hours can I phone someone about the {name}?",
                 "Which extension do I dial for help with the {name}?"]),
    "price": ("Price and accessories", "The {name} sells for {price} euros and ships with a {first} and a {second}.",
              ["How much does the {name} cost?",
               "What accessories are in the box with the {name}?"]),
}
SECTIONS = ["Overview", "Specifications", "Battery", "Firmware", "Support", "Warranty", "Price and accessories",
            "Care"]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(2)).capitalize()


def product_names(count: int, rng: random.Random) -> list[str]:
    """Unique names from a small set of brands and model codes, so names overlap word by word."""
    brands = list(dict.fromkeys(_word(rng) for _ in range(max(8, count // 20))))
    names: dict[str, None] = {}
    while len(names) < count:
        names[f"{rng.choice(brands)} {rng.choice('QRSTXZ')}{rng.randint(1, 60)}"] = None
    return list(names)


def _values(name: str, rng: random.Random) -> dict[str, object]:
    first, second = rng.sample(ACCESSORIES, 2)
    start = rng.randint(7, 10)
    return {
        "name": name, "hours": rng.randint(4, 60), "minutes": rng.randint(20, 240), "years": rng.randint(1, 9),
        "email": f"claims.{name.lower().replace(' ', '')}@example.com", "maker": rng.choice(MAKERS),
        "city": rng.choice(CITIES), "grams": rng.randint(90, 4000), "width": rng.randint(5, 60),
        "depth": rng.randint(5, 60), "version": f"{rng.randint(1, 9)}.{rng.randint(0, 19)}.{rng.randint(0, 9)}",
        "month": f"{rng.choice(MONTHS)} {rng.randint(2019, 2025)}",
        "days": rng.choice(["Monday to Friday", "every day", "on weekdays", "Tuesday to Saturday"]),
        "start": start, "end": start + rng.randint(6, 10), "extension": rng.randint(100, 999),
        "price": rng.randint(19, 1900), "first": first, "second": second,
    }


def page(name: str, rng: random.Random) -> Page:
    category = rng.choice(CATEGORIES)
    values = _values(name, rng)
    facts = {FACTS[kind][0]: (kind, FACTS[kind][1].format(**values)) for kind in FACTS}

    def filler() -> str:
        return " ".join(f.format(name=name, category=category) for f in rng.sample(FILLER, 2))

    parts = [f"# {name} {category}", ""]
    for section in SECTIONS:
        parts.append(f"## {section}")
        kind_fact = facts.get(section)
        lead = f"The {name} comes in {rng.choice(COLOURS)}." if section == "Overview" else filler()
        parts.append(f"{lead} {kind_fact[1]}" if kind_fact else f"{lead} {filler()}")
        parts.append("")
        parts.append(filler())
        parts.append("")
    questions = [Question(template.format(name=name), facts[FACTS[kind][0]][1], kind)
                 for kind in FACTS for template in FACTS[kind][2]]
    return Page(f"{name.lower().replace(' ', '-')}.md", "\n".join(parts), questions)


def corpus(pages: int, seed: int = 13) -> list[Page]:
    rng = random.Random(seed)
    return [page(name, rng) for name in product_names(pages, rng)]


def question_set(pages: list[Page], count: int, seed: int = 29) -> list[Question]:
    """`count` questions over distinct products, every question wording in turn."""
    chosen = random.Random(seed).sample(pages, min(count, len(pages)))
    return [p.questions[i % len(p.questions)] for i, p in enumerate(chosen)]
