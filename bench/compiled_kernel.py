"""Would SimPy's kernel run faster compiled? SimPy's per-event path (Environment.step, Process._resume, an event's
__init__ and its heap entry) is the last interpreted code every simulated event runs, about 0.6-0.8 us an event
here. mypyc can compile a class that subclasses an interpreted one only as a *non-native* class
(`@mypyc_attr(native_class=False)`): its methods become C, but its instances stay ordinary Python objects whose
attributes it reads and writes through the generic C API. This script compiles the same three pieces that way
(`KERNEL` below: step, _resume and the engine's `_Scheduled` event, with SimPy's handling of a process's return
value and of failed events; the traceback trimming and StopSimulation's rescheduling, which cost nothing on this path,
are left out) in a temporary folder, and times a bare loop (8 processes, each yielding timeouts) on SimPy's own
classes with simserve's `_Scheduled`, as simserve runs them, and on the compiled ones, alternating, CPU time, best of
--repeat; with --pieces, also each piece compiled alone (the others as simserve runs them):

    python bench/compiled_kernel.py --events 200000 --repeat 7 --pieces

Needs mypyc (the test extra installs mypy) and a C compiler. docs/performance.md ("SimPy's kernel compiled",
stage 23) records the result: the compiled kernel is slower, so simserve keeps SimPy's."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

KERNEL = '''
from __future__ import annotations
from heapq import heappop, heappush
from typing import Any
import simpy.events  # without it mypyc's C refers to a module cache for simpy.events it never declares
from mypy_extensions import mypyc_attr
from simpy.core import EmptySchedule, Environment
from simpy.events import Event, Process


@mypyc_attr(native_class=False)
class Env(Environment):
    def step(self) -> None:
        queue: Any = self._queue  # SimPy's annotation types the entries; mypyc would check them
        try:
            entry: Any = heappop(queue)
        except IndexError:
            raise EmptySchedule from None
        self._now = entry[0]
        event = entry[3]
        callbacks = event.callbacks
        event.callbacks = None
        for callback in callbacks:
            callback(event)
        if not event._ok and not hasattr(event, "_defused"):
            exc = type(event._value)(*event._value.args)
            exc.__cause__ = event._value
            raise exc

    def run_all(self) -> None:
        try:
            while True:
                self.step()
        except EmptySchedule:
            pass


@mypyc_attr(native_class=False)
class Scheduled(Event):  # simserve/engine/events.py's _Scheduled, line for line
    def __init__(self, env: Any, delay_s: float, priority: float, at_s: float | None = None) -> None:
        self.env = env
        self.callbacks = []
        self._ok = True
        self._value = None
        if at_s is None:
            entry: Any = (env._now + delay_s, priority, next(env._eid), self)
        else:
            if at_s < env._now:
                raise ValueError(f"cannot schedule at {at_s!r}, before now ({env._now!r})")
            entry = (at_s, priority, next(env._eid), self)
        heappush(env._queue, entry)


@mypyc_attr(native_class=False)
class Proc(Process):
    def _resume(self, event: Any) -> None:
        env = self.env
        env._active_proc = self
        while True:
            try:
                if event._ok:
                    event = self._generator.send(event._value)
                else:
                    event._defused = True
                    exc = type(event._value)(*event._value.args)
                    exc.__cause__ = event._value
                    event = self._generator.throw(exc)
            except StopIteration as e:
                self._ok = True
                self._value = e.args[0] if len(e.args) else None
                env.schedule(self)
                break
            except BaseException as e:
                self._ok = False
                self._value = e
                env.schedule(self)
                break
            if event.callbacks is not None:
                event.callbacks.append(self._resume)
                break
            self._target = event
        env._active_proc = None
'''

CHILD = r'''
import sys, time
import simpy
from simserve.engine.events import _Scheduled as Scheduled  # the event simserve runs
sys.path.insert(0, sys.argv[1])
import kernel


def process(env, event_class, n):
    for _ in range(n):
        yield event_class(env, 1.0, 1)


def once(which, n):
    # "simpy": SimPy's classes and simserve's event; "compiled": the three compiled, with a compiled loop;
    # "step", "event" or "resume": that piece compiled alone.
    env = kernel.Env() if which in ("step", "compiled") else simpy.Environment()
    event_class = kernel.Scheduled if which in ("event", "compiled") else Scheduled
    for _ in range(8):
        generator = process(env, event_class, n // 8)
        if which in ("resume", "compiled"):
            kernel.Proc(env, generator)
        else:
            env.process(generator)
    t = time.process_time()
    if which == "compiled":
        env.run_all()
    else:
        env.run()
    assert env.now == n // 8
    return time.process_time() - t


n, repeat = int(sys.argv[2]), int(sys.argv[3])
best = dict.fromkeys(["simpy", "compiled"] + (["step", "event", "resume"] if sys.argv[4] == "1" else []), 1e9)
for _ in range(repeat):
    for which in best:
        best[which] = min(best[which], once(which, n))
for which, s in best.items():
    label = which if which in ("simpy", "compiled") else f"only {which} compiled"
    print(f"{label:22s} {s / n * 1e6:.3f} us an event (best of {repeat}, {n:,} events)")
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--pieces", action="store_true", help="also time each piece compiled alone")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="simserve-kernel-") as tmp:
        Path(tmp, "kernel.py").write_text(KERNEL)
        built = subprocess.run([sys.executable, "-m", "mypyc", "kernel.py"], cwd=tmp, capture_output=True, text=True)
        if built.returncode != 0 or not list(Path(tmp).glob("kernel.*.so")):
            sys.exit(f"mypyc could not compile the kernel:\n{built.stdout[-2000:]}{built.stderr[-2000:]}")
        subprocess.run([sys.executable, "-c", CHILD, tmp, str(args.events), str(args.repeat),
                        "1" if args.pieces else "0"], check=True)


if __name__ == "__main__":
    main()
