"""What the offline embedding model costs: load time, embeddings per second, and memory, in-process
and in a real `python -m bot` with no key (goal: ≤ 150 MB RSS over the same bot without it).

The bot is measured twice from a fresh data folder, EMBEDDING=off (today's baseline) and
EMBEDDING=auto (no key: the offline model): idle after start — the model loads on first use, so
both are the same — and after one console message, which loads the local chat model in both runs
and the embedding model (embedding the message) in the second.

    python bench/embedding.py            # table
    python bench/embedding.py --json     # machine-readable
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TEXTS = 1000
BATCH = 32  # what the background embedding queue sends at once (plugins/bootstrap/embeddings.py)
LOADED = "offline embedding model"
TIMEOUT = 300  # seconds for the bot to start or answer


def mb(value: int) -> float:
    return round(value / 2**20, 1)


def short_texts() -> list[str]:
    topics = ["the weather", "my dog", "a train to Porto", "dinner plans", "the new release", "a book"]
    return [f"Message {i}: something about {topics[i % len(topics)]} and what was said {i % 7} days ago"
            for i in range(TEXTS)]


def in_process() -> dict[str, Any]:
    """Load and throughput in this process (numpy is already in the bot, so it is loaded first)."""
    import numpy  # noqa: F401

    from plugins.offline_embedding import OfflineEmbedding, model_files

    files = model_files()
    if files is None:
        raise SystemExit("the wordllama package is not installed: pip install -e .")
    process = psutil.Process()
    before = process.memory_info().rss
    embedder = OfflineEmbedding(*files)
    started = time.perf_counter()
    embedder.model()
    load_seconds = time.perf_counter() - started
    loaded = process.memory_info().rss
    texts = short_texts()
    embedder.embed(texts[:BATCH])  # the first call pays one-off set-up costs
    started = time.perf_counter()
    embedder.embed(texts)
    one_batch = time.perf_counter() - started
    started = time.perf_counter()
    for at in range(0, len(texts), BATCH):
        embedder.embed(texts[at:at + BATCH])
    batches = time.perf_counter() - started
    return {
        "load_seconds": round(load_seconds, 3),
        "rss_load_mb": mb(loaded - before),
        "rss_after_embedding_mb": mb(process.memory_info().rss - before),
        "per_second_one_batch": round(TEXTS / one_batch),
        f"per_second_batches_of_{BATCH}": round(TEXTS / batches),
    }


def _lines(stream: IO[str], into: queue.Queue[tuple[str, str]], name: str) -> None:
    for line in stream:
        into.put((name, line.rstrip("\n")))


def _settled_rss(process: psutil.Process) -> int:
    """RSS once it has stopped changing for a second (at most ten seconds)."""
    last, deadline = process.memory_info().rss, time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(1)
        now = process.memory_info().rss
        if abs(now - last) < 2**20:
            return now
        last = now
    return last


def bot_rss(embedding: str) -> dict[str, float]:
    """`python -m bot` with no key: RSS idle after start, then after one console message."""
    with tempfile.TemporaryDirectory() as folder:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("OPENAI", "ANTHROPIC", "TELEGRAM", "DISCORD", "MODEL_", "LOCAL_"))}
        env.update(PYTHONPATH=str(ROOT), DATA_DIR=f"{folder}/data", PORT="0", HOST="127.0.0.1",
                   CHARACTER_PATH=str(ROOT / "characters" / "default.json"), EMBEDDING=embedding,
                   KNOWLEDGE="off", LOG_LEVEL="INFO")
        bot = subprocess.Popen([sys.executable, "-m", "bot"], cwd=folder, env=env, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        lines: queue.Queue[tuple[str, str]] = queue.Queue()
        for name, stream in (("out", bot.stdout), ("err", bot.stderr)):
            threading.Thread(target=_lines, args=(stream, lines, name), daemon=True).start()

        seen: list[tuple[str, str]] = []

        def wait_for(name: str, text: str) -> None:
            """Until a line with `text` has come from stdout ("out") or stderr ("err"), in any order."""
            deadline = time.monotonic() + TIMEOUT
            while not any(source == name and text in line for source, line in seen):
                if time.monotonic() > deadline:
                    raise SystemExit(f"timed out waiting for {text!r}")
                try:
                    seen.append(lines.get(timeout=1))
                except queue.Empty:
                    if bot.poll() is not None:
                        raise SystemExit(f"the bot exited ({bot.returncode}) before {text!r}") from None

        try:
            process = psutil.Process(bot.pid)
            wait_for("err", "is ready")
            idle = _settled_rss(process)
            bot.stdin.write("My dog is called Rex and he likes the park.\n")
            bot.stdin.flush()
            wait_for("out", "")  # the reply
            if embedding != "off":
                wait_for("err", LOADED)
            after = _settled_rss(process)
        finally:
            bot.stdin.close()
            bot.wait(timeout=60)
    return {"idle_mb": mb(idle), "after_one_message_mb": mb(after)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result: dict[str, Any] = {"model": in_process()}
    result["bot_without"] = bot_rss("off")
    result["bot_with"] = bot_rss("auto")
    result["bot_rss_delta_mb"] = round(result["bot_with"]["after_one_message_mb"]
                                       - result["bot_without"]["after_one_message_mb"], 1)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for key, value in result["model"].items():
        print(f"{key:32} {value}")
    for run in ("bot_without", "bot_with"):
        for key, value in result[run].items():
            print(f"{run + ' ' + key:32} {value}")
    print(f"{'bot_rss_delta_mb (goal <= 150)':32} {result['bot_rss_delta_mb']}")


if __name__ == "__main__":
    main()
