"""Run a pytest selection over several processes where pytest-xdist is not installed.

The GPU machines have pytest but not pytest-xdist, and compiling each kernel specialization
dominates the compiled test suite: one process leaves most CPUs idle. This collects the test ids,
deals them round-robin to N shards (neighbouring parametrizations land on different shards), and
runs one ``pytest`` per shard at once, passing their output lines on as they come (with ``-v``,
one line per finished test), so a run stopped part way has already shown what finished. Stopped
itself (SIGTERM, SIGINT), it stops the shards. It ends with the outcomes counted over all shards
(from the ``-v`` lines) and the failed tests named.

    python tests/shards.py N [pytest arguments]     # e.g. tests/shards.py 8 -v -m gpu

Arguments that name existing files or folders select the tests and are replaced by the collected
ids in the shards; give an option whose value is a path as ``--option=path``.

Exit status: 0 when every shard passed, else the largest shard status (1: some test failed), 5
when nothing was collected, 124 when stopped.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading


OUTCOME = re.compile(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")


def collect(args: list[str]) -> list[str]:
    """The node ids pytest would run for ``args`` (its verbosity flags aside)."""
    args = [a for a in args if a not in ("-v", "-vv", "--verbose")]
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                           "-p", "no:cacheprovider", *args], capture_output=True, text=True)
    ids = [line.strip() for line in done.stdout.splitlines() if "::" in line]
    if done.returncode not in (0, 5):
        sys.stdout.write(done.stdout + done.stderr)
    return ids


def main(argv: list[str]) -> int:
    if not argv or not argv[0].isdigit() or int(argv[0]) < 1:
        print("usage: python tests/shards.py N [pytest arguments] (N >= 1 processes)",
              file=sys.stderr)
        return 2
    n, args = int(argv[0]), argv[1:]
    ids = collect(args)
    if not ids:
        print("shards: no tests collected")
        return 5
    # pytest options (which ids were selected from) stay; explicit paths give way to the ids
    opts = [a for a in args if a.startswith("-") or not os.path.exists(a.split("::")[0])]
    shards = [ids[i::n] for i in range(min(n, len(ids)))]
    print(f"shards: {len(ids)} tests over {len(shards)} processes", flush=True)
    lock = threading.Lock()
    outcomes: dict[str, str] = {}  # test id -> its outcome, from the -v lines

    def relay(stream) -> None:  # whole lines, so the shards' lines never mix
        for line in stream:
            with lock:
                sys.stdout.write(line)
                sys.stdout.flush()
                found = OUTCOME.match(line)
                if found:
                    outcomes[found.group(1)] = found.group(2)

    procs = [subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *opts,
                               *shard], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, bufsize=1) for shard in shards]
    readers = [threading.Thread(target=relay, args=(p.stdout,), daemon=True) for p in procs]
    for t in readers:
        t.start()
    stopped = []

    def stop(signum, frame):
        stopped.append(signum)
        for p in procs:
            if p.poll() is None:
                p.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    codes = [p.wait() for p in procs]
    for t in readers:
        t.join(timeout=10)
    counts = {o: sum(v == o for v in outcomes.values()) for o in sorted(set(outcomes.values()))}
    print(f"shards: exit statuses {codes}; {len(outcomes)} of {len(ids)} tests reported: "
          + (", ".join(f"{n} {o.lower()}" for o, n in counts.items()) or "none"))
    for test, outcome in sorted(outcomes.items()):
        if outcome in ("FAILED", "ERROR"):
            print(f"shards: {outcome} {test}")
    if stopped:
        print("shards: stopped before the shards finished")
        return 124
    return max((c for c in codes if c != 5), default=0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
