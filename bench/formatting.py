"""Formatting benchmark: Markdown → Telegram HTML chunks (`render_chunks`) on hostile and normal replies.

A model reply (or a user quoting one back) can be any text, and formatting runs on the event loop,
so every input must cost time linear in its length. Each pathological input is `--chars` long
(default 100,000); the goal is at most 50 ms each (best of `--repeat` runs).

    python bench/formatting.py [--chars 100000] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from connectors.telegram_connector.formatting import render_chunks  # noqa: E402

GOAL_MS = 50.0
NORMAL_REPLY = (
    "# Plan for the week\n\nHere is what I'd suggest, **step by step**:\n\n"
    "- Monday: *light* run, 5 km\n- Tuesday: rest, or `yoga --gentle`\n- Wednesday: intervals (see "
    "[the guide](https://example.com/intervals?a=1&b=2))\n\n> Consistency beats intensity.\n\n"
    "```python\nfor day in week:\n    if day.is_rest:\n        continue\n    run(day)\n```\n\n"
    "Keep ~~sugar~~ snacks simple, and ||don't skip the warm-up||. __Good luck!__ 😀\n"
)


def repeat(unit: str, chars: int, prefix: str = "", suffix: str = "") -> str:
    """`unit` repeated so the whole text is about `chars` long."""
    return prefix + unit * max(1, (chars - len(prefix) - len(suffix)) // len(unit)) + suffix


INPUTS: dict[str, Callable[[int], str]] = {
    "heading_spaces": lambda n: repeat(" ", n, "# a", "b"),
    "newlines": lambda n: repeat("\n", n),
    "open_brackets": lambda n: repeat("[", n),
    "escaped_angles": lambda n: repeat("<", n),  # every character becomes an HTML entity
    "escaped_amps": lambda n: repeat("&", n),
    "unclosed_italics": lambda n: repeat("*a ", n),
    "unclosed_bold": lambda n: repeat("**a ", n),
    "unclosed_underscores": lambda n: repeat("_a ", n),
    "unclosed_strike": lambda n: repeat("~~a ", n),
    "unclosed_spoilers": lambda n: repeat("||a ", n),
    "unclosed_fence": lambda n: repeat("a", n, "```"),
    "unclosed_links": lambda n: repeat("[a](http:", n),
    "indented_lines": lambda n: repeat(" ", n, "\n"),
    "normal_reply": lambda n: NORMAL_REPLY,
    "normal_reply_x100k": lambda n: repeat(NORMAL_REPLY, n),
}


def best_ms(text: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        render_chunks(text)
        times.append((time.perf_counter() - started) * 1000)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chars", type=int, default=100_000, help="length of each pathological input")
    parser.add_argument("--repeat", type=int, default=3, help="runs per input; the best is reported")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object last")
    args = parser.parse_args()
    figures: dict[str, dict[str, float | int | bool]] = {}
    for name, make in INPUTS.items():
        text = make(args.chars)
        ms = best_ms(text, args.repeat)
        figures[name] = {"chars": len(text), "ms": round(ms, 2), "ok": ms <= GOAL_MS}
    width = max(len(k) for k in figures)
    print(f"{'input':<{width}}  {'chars':>8}  {'ms':>9}  goal ≤ {GOAL_MS:g} ms")
    for name, row in figures.items():
        print(f"{name:<{width}}  {row['chars']:>8}  {row['ms']:>9.2f}  {'ok' if row['ok'] else 'SLOW'}")
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
