#!/usr/bin/env python3
"""A/B timing of two or more bench_worker builds on one model, without ONNX Runtime.

    ab.py THREADS ROUNDS COUNT MODEL_DIR WORKER_A WORKER_B [...]

Starts every worker (runtime/examples/bench_worker.rs, release) on MODEL_DIR with
RAYON_NUM_THREADS=THREADS, warms each up, then runs ROUNDS rounds; in each round
every worker runs COUNT back-to-back calls, the order reversing every round, with
a 20 ms pause between batches. Prints each worker's median in µs on one line.
Same-run A/B is the only comparison this noisy host supports: build the old
commit's worker, copy it aside, build the new one, and run both here.
"""
import os
import statistics
import subprocess
import sys
import time


def main():
    if len(sys.argv) < 7:
        raise SystemExit(__doc__)
    threads, rounds, count = (int(v) for v in sys.argv[1:4])
    model, workers = sys.argv[4], sys.argv[5:]
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    procs = []
    for w in workers:
        p = subprocess.Popen(
            [w, model], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        line = p.stdout.readline()
        if not line.startswith("ready"):
            raise SystemExit(f"{w} failed to start: {line!r}")
        procs.append(p)

    def run(p, n):
        p.stdin.write(f"run 0 {n}\n")
        p.stdin.flush()
        words = p.stdout.readline().split()
        if not words or words[0] != "times":
            raise SystemExit(f"worker failed: {words}")
        return [int(v) for v in words[1:]]

    for p in procs:
        run(p, count)
    results = [[] for _ in procs]
    for r in range(rounds):
        order = range(len(procs)) if r % 2 == 0 else reversed(range(len(procs)))
        for i in order:
            results[i] += run(procs[i], count)
            time.sleep(0.02)
    print(
        " | ".join(
            f"{os.path.basename(w)} {statistics.median(x) / 1e3:.1f} µs"
            for w, x in zip(workers, results)
        )
    )
    for p in procs:
        p.stdin.close()
        p.wait()


if __name__ == "__main__":
    main()
