"""Can the offline model hold a conversation? A scripted 20-turn chat with the default character,
answered by the bundled local model through the real pipeline and a SQLite file, in two processes
(the second is a restart on the same database).

Reports: replies that loop (one sentence 3+ times; goal 0), replies that hit max tokens (the local
provider then trims them to their last whole sentence) and replies a reader sees end mid-sentence
(goal ≤ 10%),
stated facts recalled when asked (goal ≥ 4 of 5, counted over both phases), seconds per reply, and
peak RSS of each process (goal ≤ 400 MB).

    python bench/offline_chat.py            # table
    python bench/offline_chat.py --json     # machine-readable
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (message, expected word in the reply or None). Five facts are stated, then asked back: some in
# the same process, the rest after the restart.
PHASES: list[list[tuple[str, str | None]]] = [
    [
        ("hi! I'm Sam.", None),
        ("My dog is called Rex.", None),
        ("tell me a joke", None),
        ("I live in Lisbon.", None),
        ("what's a good way to spend a rainy afternoon?", None),
        ("My sister's name is Ana.", None),
        ("I work as a nurse.", None),
        ("do you like music?", None),
        ("My favourite colour is green.", None),
        ("What is my dog called?", "rex"),
        ("Where do I live?", "lisbon"),
        ("thanks, that's all for now", None),
    ],
    [
        ("hello again!", None),
        ("What is my sister's name?", "ana"),
        ("who are you?", None),
        ("What do I do for work?", "nurse"),
        ("can you recommend a book?", None),
        ("What is my favourite colour?", "green"),
        ("What is my dog called?", "rex"),
        ("bye!", None),
    ],
]
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]?")


def mid_sentence(text: str) -> bool:
    """The reply stops without ending its last sentence (what a reader sees as cut off)."""
    last = text.rstrip()[-1:]
    return bool(last) and last.isascii() and last not in ".!?\"')*"  # an emoji ends a sentence too


def loops(text: str) -> bool:
    """One sentence (normalised) repeated three or more times."""
    counts: dict[str, int] = {}
    for sentence in _SENTENCE.findall(text):
        key = " ".join(sentence.lower().split())
        if len(key) > 3:
            counts[key] = counts.get(key, 0) + 1
    return any(n >= 3 for n in counts.values())


async def run_phase(index: int, data_dir: Path) -> dict[str, Any]:
    """One process's share of the conversation, through the real runtime and pipeline."""
    from bot.character import load_character
    from bot.ids import create_unique_uuid
    from bot.runtime import AgentRuntime
    from bot.settings import Settings
    from bot.store.factory import create_store
    from bot.types import ChannelType, Content, Entity, EventType, Memory, ModelType, Room
    from plugins.bootstrap import bootstrap_plugin
    from plugins.models import model_plugins

    settings = Settings(_env_file=None, data_dir=data_dir, model_providers="local", port=0,
                        rate_limit_per_minute=0)
    character = load_character(ROOT / "characters" / "default.json").character
    models, _ = model_plugins(settings, character)
    runtime = AgentRuntime(character, settings, create_store(settings), [bootstrap_plugin(), *models])
    await runtime.initialize()
    cut: list[bool] = []  # this turn's reply hit max_tokens

    async def on_model(payload: dict[str, Any]) -> None:
        if payload.get("ok") and payload["type"] is ModelType.TEXT_LARGE:
            cut.append(payload.get("completion_tokens", 0) >= settings.local_max_tokens)

    runtime.on(EventType.MODEL_USED, on_model)
    agent = runtime.agent_id
    user = Entity(id=create_unique_uuid(agent, "bench:user"), agent_id=agent, names=["Sam"])
    room = Room(id=create_unique_uuid(agent, "bench:room"), agent_id=agent, name="bench", source="bench",
                type=ChannelType.DM, channel_id="bench")
    await runtime.ensure_connection(user, room)
    turns = []
    for text, expected in PHASES[index]:
        replies: list[str] = []

        async def reply(content: Content, replies: list[str] = replies) -> list[str]:
            replies.append(content.text)
            return [f"bench:{uuid.uuid4()}"]

        message = Memory(entity_id=user.id, agent_id=agent, room_id=room.id,
                         content=Content(text=text, source="bench", channel_type=ChannelType.DM))
        cut.clear()
        started = time.perf_counter()
        ticket = await runtime.receive_message(message, reply)
        await ticket.outcome
        answer = " ".join(replies)
        turns.append({"message": text, "reply": answer, "seconds": round(time.perf_counter() - started, 2),
                      "loops": loops(answer), "cut": any(cut), "mid_sentence": mid_sentence(answer),
                      "expected": expected,
                      "recalled": None if expected is None else expected in answer.lower()})
    await runtime.stop()
    await runtime.store.close()
    return {"turns": turns, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--phase", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase is not None:
        print(json.dumps(asyncio.run(run_phase(args.phase, args.data_dir))))
        return
    with tempfile.TemporaryDirectory() as data_dir:
        phases = []
        for index in range(len(PHASES)):  # a new process per phase: the second is a restart
            done = subprocess.run([sys.executable, __file__, "--phase", str(index), "--data-dir", data_dir],
                                  capture_output=True, text=True, check=True)
            phases.append(json.loads(done.stdout.strip().splitlines()[-1]))
    turns = [t for p in phases for t in p["turns"]]
    asked = [t for t in turns if t["expected"]]
    result = {
        "replies": len(turns),
        "looping_replies": sum(t["loops"] for t in turns),
        "hit_max_tokens_pct": round(100 * sum(t["cut"] for t in turns) / len(turns), 1),
        "ended_mid_sentence_pct": round(100 * sum(t["mid_sentence"] for t in turns) / len(turns), 1),
        "facts_recalled": f"{sum(bool(t['recalled']) for t in asked)}/{len(asked)}",
        "seconds_per_reply": round(sum(t["seconds"] for t in turns) / len(turns), 2),
        "peak_rss_mb": max(p["peak_rss_mb"] for p in phases),
        "turns": turns,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for turn in turns:
        flags = "".join(f for f, on in (("L", turn["loops"]), ("C", turn["cut"]), ("M", turn["mid_sentence"]),
                                        ("✓", turn["recalled"]), ("✗", turn["recalled"] is False)) if on)
        print(f"[{turn['seconds']:5.2f}s {flags:2}] {turn['message']}\n        → {turn['reply'][:160]!r}")
    print()
    for key in ("replies", "looping_replies", "hit_max_tokens_pct", "ended_mid_sentence_pct", "facts_recalled",
                "seconds_per_reply", "peak_rss_mb"):
        print(f"{key:24} {result[key]}")


if __name__ == "__main__":
    main()
