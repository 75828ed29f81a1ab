"""E6 (run before the image topic was partitioned; argv partitions now sets the image topic's):
the service itself against an image partition that already holds N batch objects.
A 30-visit replay at 20x (sleep payload) on a fresh stack whose image topic is pre-filled with
N single-record batches the dispatcher never reads (it starts at the end of the partition).
argv: N [fetch_wait_ms] [partitions]"""
import asyncio, sys, time
from pathlib import Path
import loadtest.replay as replay
from loadtest.plan import Timing
from loadtest.replay import ReplayConfig, run_replay
from loadtest.schedule import load_night, parse_columns
from loadtest.summary import summarize_replay
from prompt.config import Settings
from kit import fill

N = int(sys.argv[1]); WAIT = int(sys.argv[2]) if len(sys.argv) > 2 else 10
PARTS = int(sys.argv[3]) if len(sys.argv) > 3 else 1
orig = replay.ensure_topics

async def ensure_and_fill(settings, bootstrap, partitions=None):
    out = await orig(settings, bootstrap, partitions)
    t = time.monotonic()
    parts = (partitions or {}).get(settings.topics.image_arrival, settings.topic_partitions)
    for p in range(parts):
        await fill(bootstrap, settings.topics.image_arrival, N // parts, 1, partition=p)
    print(f"prefilled {N} objects in {time.monotonic() - t:.0f} s", flush=True)
    return out

replay.ensure_topics = ensure_and_fill
night = load_night(Path("/work/shared/data/nights/sim_20250501_schedview.csv"), parse_columns(None)).select(30, "300")
settings = Settings(state_dir=Path(f"/tmp/e6-state-{N}-{WAIT}-{PARTS}"), kafka_fetch_max_wait_ms=WAIT, topic_partitions=1)
config = ReplayConfig(timing=Timing(speed=20), log_dir=Path("/tmp/e6-logs"), quiet=True, image_partitions=PARTS)
r = asyncio.run(run_replay(settings, night, config))
s = summarize_replay(r)
print(f"N={N} wait={WAIT} partitions={PARTS}: finished {s['finished']} late {s['late']} expired {s['expired']} "
      f"lost {s['lost']} budget_met {s['budget_met']} latency p99 {s['latency_s']['p99']} overhead p50/p99 "
      f"{s['overhead_ms']['p50']}/{s['overhead_ms']['p99']} wall {s['wall_s']}")
