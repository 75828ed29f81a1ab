"""E2: how many produce batches (= tansu objects) does the replay's sender make on the image
topic over the night? Greedy model of aiokafka's accumulator: a batch opens at its first
record and closes linger_ms later (or at 1 MiB)."""
import sys
from loadtest.plan import IMAGE, Faults, Timing, build_plan
from loadtest.schedule import load_night, parse_columns
night = load_night(__import__("pathlib").Path("/work/shared/data/nights/sim_20250501_schedview.csv"), parse_columns(None))
speed = float(sys.argv[1]) if len(sys.argv) > 1 else 20
plan = build_plan(night, list(range(189)), Timing(speed=speed), Faults(), 0)
walls = [e.wall for e in plan.events if e.kind == IMAGE]
for linger in (0.005, 0.05):
    batches, open_until = [], -1.0
    for w in walls:
        if w > open_until:
            batches.append((w, 0)); open_until = w + linger
        batches[-1] = (batches[-1][0], batches[-1][1] + 1)
    n = len(batches)
    # cumulative count against visit index
    vis = [e.visit.index for e in plan.events if e.kind == IMAGE]
    print(f"linger {linger*1000:.0f} ms: {len(walls)} images in {n} batches ({len(walls)/n:.1f}/batch); wall {plan.end_wall/60:.1f} min")
    # objects after k visits
    idx = 0; counts = {}
    cum = 0; open_until = -1.0
    for w, v in zip(walls, vis):
        if w > open_until:
            cum += 1; open_until = w + linger
        counts[v] = cum
    print("   objects after visit: " + "  ".join(f"{k}:{counts[k]}" for k in (50, 100, 200, 250, 300, 345, 400, 600, 800, 1000) if k in counts))
