"""simserve beside BLIS on BLIS's own speed workload: CPU seconds of the whole process, interleaved runs.

The workload (bench/blis/): 8 x Llama-3.1-8B on H100 (TP1), Poisson 20 requests/s, prompts N(400, 100) clipped to
[50, 1000], outputs N(4150, 1000) clipped to [64, 14336], max_num_seqs 256, max_num_batched_tokens 2048, BLIS's
26,312 KV blocks, round robin, FCFS; simserve's copy (blis-speed.yaml) uses the two length laws as exact PMFs.
At 20 requests/s the cluster is overloaded (it serves about 10/s), so a long run is a saturated, preempting one.

For each size in --requests, --repeat times, alternating: simserve in a fresh interpreter (`user_python()`: as a
`pip install .` user has it, without this environment's .pth files; `import simserve`, load
the scenario, `simserve.run`), then BLIS (if --blis is given). The CPU time of each child process (user + system,
from getrusage(RUSAGE_CHILDREN)) is what is compared: interpreter start, imports and writing the records included,
as a user pays them. The simserve child also reports, from time.process_time inside it, the CPU of `import simserve`
plus parsing the scenario, and of the run itself, with its events and peak resident memory. Medians are reported;
CPU time, not wall time, so that a loaded machine hurts both sides alike (the load average is printed).
simserve's modules are byte-compiled first, as an installed copy is (`pip install .` compiles them).

BLIS is built with ../shared/tools/blis/build.sh (it needs Go); give its binary and the source folder it was built
in (BLIS reads its model and hardware configs from there):

    python bench/bench_blis.py --requests 1000 10000 --repeat 3 --blis /tmp/blis/blis --blis-dir /tmp/blis/src
    python bench/bench_blis.py --requests 100000 --repeat 1            # simserve alone
    python bench/bench_blis.py --requests 10000 --root ../before       # another checkout (before/after)
    python bench/bench_blis.py --scenario scenarios/quickstart.yaml --set workload.arrival.rate_per_s=1.2 \
        --requests 20000 --repeat 5                                    # the light load (docs/performance.md)
    python bench/bench_blis.py --requests 10000 --repeat 4 --pure-too   # compiled engine against its pure source
    python bench/bench_blis.py --requests 1000 --scenario bench/vidur/simserve-a100.yaml --peer-name Vidur \
        --peer 'VIDUR_HOME=$HOME/vidur bench/vidur/run.sh {n} r{n}_{i}'     # beside Vidur (bench/vidur/README.md)
"""

from __future__ import annotations

import argparse
import atexit
import functools
import json
import os
import resource
import shutil
import site
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import venv
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KIT = Path(__file__).resolve().parent / "blis"

CHILD = r"""
import json, resource, sys, time
t0 = time.process_time()
import simserve
s = simserve.load_scenario(sys.argv[1], sys.argv[3:])  # overrides: --set KEY=VALUE
s = s.model_copy(update={"workload": s.workload.model_copy(update={"num_requests": int(sys.argv[2])})})
t1 = time.process_time()
r = simserve.run(s)
t2 = time.process_time()
m = r.summary
print(json.dumps({"startup_cpu_s": t1 - t0, "run_cpu_s": t2 - t1, "num_events": int(m["num_events"]),
                  "events_per_request": float(m["events_per_request"]), "num_preemptions": int(m["num_preemptions"]),
                  "num_completed": int(m["num_completed"]), "output_tokens": int(m["output_tokens"]),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "engine": simserve.engine_build()}))
"""


def child_cpu(cmd: list[str], **kw: Any) -> tuple[float, str]:
    """Run a child to completion; its CPU seconds (user + system) and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, **kw)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, out.stdout


@functools.cache  # made once per bench process
def user_python() -> str:
    """The interpreter a child runs, as a `pip install .` user has it: this environment's packages, reached through
    a throwaway venv whose one .pth file names this environment's site-packages folders. Their own .pth files then
    do not run. In a development checkout one of them is the editable install's finder (`pip install -e .`): at
    interpreter start it imports pathlib, hashlib, importlib.resources and more, before any timer in the child
    starts, and it sits on sys.meta_path for every import after. An installed copy has neither."""
    home = Path(tempfile.mkdtemp(prefix="simserve-user-python-"))
    atexit.register(shutil.rmtree, home, True)
    venv.create(home, with_pip=False, symlinks=os.name != "nt")
    purelib = sysconfig.get_path("purelib", vars={"base": str(home), "platbase": str(home)})
    folders = [p for p in site.getsitepackages() if Path(p).is_dir()]
    Path(purelib, "simserve-bench-deps.pth").write_text("".join(f"{p}\n" for p in folders))
    return str(home / ("Scripts" if os.name == "nt" else "bin") / Path(sys.executable).name)


def user_env(root: Path) -> dict[str, str]:
    """The environment a child runs `root`'s simserve in: this one, importing from `root`, and without
    PYTHONDONTWRITEBYTECODE (an installed copy has its bytecode; nothing stale is written either way)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(root)
    return env


def byte_compile(root: Path) -> None:
    """Compile the checkout's modules to bytecode first, as `pip install .` does: a user's runs load cached
    bytecode, so compiling simserve's sources is not part of what they pay (about 0.07 s a process here)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(root / "simserve")], check=True,
                   env=user_env(root))


def run_simserve(scenario: Path, n: int, root: Path = ROOT, overrides: list[str] | None = None,
                 pure: bool = False) -> dict[str, Any]:
    """One simserve child; `pure` runs the engine's Python source where the install compiled it (SIMSERVE_PURE)."""
    env = {k: v for k, v in user_env(root).items() if k != "SIMSERVE_PURE"} | ({"SIMSERVE_PURE": "1"} if pure else {})
    cpu, out = child_cpu([user_python(), "-c", CHILD, str(scenario.resolve()), str(n), *(overrides or [])],
                         env=env, cwd=root)
    return {"process_cpu_s": cpu, **json.loads(out.strip().splitlines()[-1])}


def run_blis(blis: Path, blis_dir: Path, n: int, tmp: Path) -> dict[str, Any]:
    spec = (KIT / "speed-workload.yaml").read_text().splitlines()
    wl = tmp / f"wl{n}.yaml"
    wl.write_text("\n".join(f"num_requests: {n}" if ln.startswith("num_requests:") else ln for ln in spec) + "\n")
    cmd = [str(blis), "run", "--model", "meta-llama/llama-3.1-8b-instruct", "--hardware", "H100", "--tp", "1",
           "--num-instances", "8", "--workload-spec", str(wl), "--timeout", "-1", "--log", "error",
           "--metrics-path", str(tmp / "metrics.json")]
    cpu, _ = child_cpu(cmd, cwd=blis_dir)
    return {"process_cpu_s": cpu}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scenario", type=Path, default=KIT / "blis-speed.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a scenario override, as `simserve run --set` takes it (repeatable)")
    ap.add_argument("--blis", type=Path, help="the BLIS binary (omit to run simserve alone)")
    ap.add_argument("--blis-dir", type=Path, help="the BLIS source folder it was built in (its configs)")
    ap.add_argument("--peer", help="another simulator's command, run by bash with {n} replaced by the number of "
                    "requests and {i} by the repeat; its CPU (the shell's and its children's) is compared like "
                    "BLIS's (bench/vidur/README.md runs Vidur this way)")
    ap.add_argument("--peer-name", default="peer")
    ap.add_argument("--root", type=Path, default=ROOT,
                    help="the simserve checkout to run (default: this one; another to compare before and after)")
    ap.add_argument("--pure-too", action="store_true",
                    help="after each simserve run, run it again on the engine's pure Python source (SIMSERVE_PURE=1), "
                    "and report both medians: the compiled engine's speed-up (docs/performance.md, stage 6)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    results: dict[str, Any] = {"load_average_start": os.getloadavg(), "sizes": {}}
    byte_compile(args.root)
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.requests:
            sim_runs, blis_runs, peer_runs, pure_runs = [], [], [], []
            for i in range(args.repeat):
                sim_runs.append(run_simserve(args.scenario, n, args.root, args.overrides))
                r = sim_runs[-1]
                print(f"{n:>9,} requests  simserve #{i + 1}: process {r['process_cpu_s']:.2f} s CPU "
                      f"(import + parse {r['startup_cpu_s']:.2f}, run {r['run_cpu_s']:.2f}), "
                      f"{r['events_per_request']:.2f} events/request, "
                      f"{1e6 * r['run_cpu_s'] / r['num_events']:.1f} us/event, {r['num_preemptions']:,} preemptions, "
                      f"peak RSS {r['peak_rss_mib']:.0f} MiB, {r['engine']} engine", flush=True)
                if args.pure_too:
                    pure_runs.append(run_simserve(args.scenario, n, args.root, args.overrides, pure=True))
                    p = pure_runs[-1]
                    print(f"{n:>9,} requests  pure     #{i + 1}: process {p['process_cpu_s']:.2f} s CPU "
                          f"(run {p['run_cpu_s']:.2f}), {p['engine']} engine", flush=True)
                if args.blis is not None:
                    blis_runs.append(run_blis(args.blis, args.blis_dir or args.blis.parent, n, Path(tmp)))
                    print(f"{n:>9,} requests  BLIS     #{i + 1}: process {blis_runs[-1]['process_cpu_s']:.2f} s CPU",
                          flush=True)
                if args.peer is not None:
                    cpu, _ = child_cpu(["bash", "-c", args.peer.format(n=n, i=i + 1)])
                    peer_runs.append({"process_cpu_s": cpu})
                    print(f"{n:>9,} requests  {args.peer_name} #{i + 1}: process {cpu:.2f} s CPU", flush=True)
            row: dict[str, Any] = {"simserve": sim_runs, "blis": blis_runs, args.peer_name: peer_runs}
            for key in ("process_cpu_s", "startup_cpu_s", "run_cpu_s"):
                row[f"simserve_{key}_median"] = statistics.median(r[key] for r in sim_runs)
            if pure_runs:
                row["pure"] = pure_runs
                for key in ("process_cpu_s", "run_cpu_s"):
                    row[f"pure_{key}_median"] = statistics.median(r[key] for r in pure_runs)
                print(f"{n:>9,} requests  median CPU of the run: pure {row['pure_run_cpu_s_median']:.2f} s, "
                      f"{sim_runs[0]['engine']} {row['simserve_run_cpu_s_median']:.2f} s: "
                      f"{row['pure_run_cpu_s_median'] / row['simserve_run_cpu_s_median']:.2f}x", flush=True)
            if blis_runs:
                row["blis_process_cpu_s_median"] = statistics.median(r["process_cpu_s"] for r in blis_runs)
                row["ratio_process"] = row["blis_process_cpu_s_median"] / row["simserve_process_cpu_s_median"]
                row["ratio_run_only"] = row["blis_process_cpu_s_median"] / row["simserve_run_cpu_s_median"]
                print(f"{n:>9,} requests  median CPU: BLIS {row['blis_process_cpu_s_median']:.2f} s, simserve "
                      f"{row['simserve_process_cpu_s_median']:.2f} s (run only "
                      f"{row['simserve_run_cpu_s_median']:.2f} s): {row['ratio_process']:.1f}x less CPU "
                      f"({row['ratio_run_only']:.1f}x for the run alone)", flush=True)
            if peer_runs:
                peer = statistics.median(r["process_cpu_s"] for r in peer_runs)
                row[f"{args.peer_name}_process_cpu_s_median"] = peer
                row[f"ratio_process_{args.peer_name}"] = peer / row["simserve_process_cpu_s_median"]
                print(f"{n:>9,} requests  median CPU: {args.peer_name} {peer:.2f} s, simserve "
                      f"{row['simserve_process_cpu_s_median']:.2f} s: "
                      f"{peer / row['simserve_process_cpu_s_median']:.1f}x less CPU", flush=True)
            results["sizes"][str(n)] = row
    results["load_average_end"] = os.getloadavg()
    print(f"load average: {results['load_average_start'][0]:.2f} at start, {results['load_average_end'][0]:.2f} at end")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
