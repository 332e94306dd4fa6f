"""Speed of `simserve sweep` on local processes: does a sweep keep every core busy?

A 64-run sweep (scenarios/quickstart.yaml at --requests requests each: replicas 2..5 x two routers x 8 seeds) goes
through sweep.run_tasks on a process pool of --workers, with no cache; the figure of merit is the wall time over
the sum of the runs' own wall times (1 / workers when the pool is perfectly busy; 1 when it runs one at a time).
Each run's wall time is measured inside its worker (the summary's wall_time_s). The machine's load average before
and after is printed: on a shared machine other work takes cores too, and the ratio then says less.

    python bench/bench_sweep.py --requests 10000 --workers 2
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import os
import time
from pathlib import Path

from simserve.sweep import MemoryCache, Tally, expand, make_tasks, run_tasks

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10000, help="requests per run")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes")
    parser.add_argument("--seeds", type=int, default=8)
    args = parser.parse_args()
    points = expand(["cluster.pools.0.replicas=2,3,4,5", "router=round_robin,least_outstanding"])
    tasks = make_tasks(ROOT / "scenarios" / "quickstart.yaml", [f"workload.num_requests={args.requests}"], points,
                       list(range(args.seeds)))
    load0 = os.getloadavg()
    tally = Tally()
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        run_tasks(tasks, pool, MemoryCache(), tally=tally)
    wall = time.perf_counter() - t0
    out = {"runs": len(tasks), "requests_per_run": args.requests, "workers": args.workers, "cores": os.cpu_count(),
           "wall_s": round(wall, 1), "sum_of_run_wall_s": round(tally.run_wall_s, 1),
           "wall_over_sum": round(wall / tally.run_wall_s, 3), "load_average_before": load0,
           "load_average_after": os.getloadavg()}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
