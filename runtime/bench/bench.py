#!/usr/bin/env python3
"""Times Flotilla's ONNX executor against ONNX Runtime on the models written by
gen_models.py, interleaved in one run, and prints a markdown table of medians.

    bench.py --models DIR --worker PATH [--threads 1,2] [--rounds 15] [--budget 0.08]

For each thread count T it starts the Rust worker (runtime/examples/bench_worker.rs,
release build) with RAYON_NUM_THREADS=T and opens one onnxruntime session per model
with intra_op_num_threads=T, inter_op_num_threads=1 and sequential execution. After
a warm-up it runs ROUNDS rounds; in each round every model runs a batch of
back-to-back calls on both engines, the engine that goes first alternating by round.
Each engine times its own calls (perf_counter_ns around `session.run` here,
`Instant` around `Model::run` in the worker), so the pipe between the two processes
is not measured. Batches are sized so one batch takes about BUDGET seconds.
Between batches it waits SETTLE seconds (--settle, default 0.1): ONNX Runtime's
idle pool threads spin for about 30 ms after its last run (measured with
process_time around a sleep), and without the wait that spinning took one of the
two cores from the first part of each Flotilla batch that followed.

It does not build anything or generate models: see runtime/bench/run.sh.
"""

import argparse
import os
import statistics
import subprocess
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def read_inputs(folder, sess):
    feeds = {}
    for j, i in enumerate(sess.get_inputs()):
        t = onnx.TensorProto()
        with open(os.path.join(folder, "test_data_set_0", f"input_{j}.pb"), "rb") as f:
            t.ParseFromString(f.read())
        feeds[i.name] = numpy_helper.to_array(t)
    return feeds


class Worker:
    def __init__(self, path, folders, threads):
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
        self.proc = subprocess.Popen(
            [path, *folders], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.diffs = []
        for _ in folders:
            words = self.proc.stdout.readline().split()
            if not words or words[0] != "ready":
                raise SystemExit(f"worker failed to start: {words}")
            self.diffs.append(float(words[2]))

    def run(self, index, count):
        self.proc.stdin.write(f"run {index} {count}\n")
        self.proc.stdin.flush()
        words = self.proc.stdout.readline().split()
        if not words or words[0] != "times":
            raise SystemExit(f"worker failed: {words}")
        return [int(w) for w in words[1:]]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def ort_run(sess, feeds, count):
    times = []
    for _ in range(count):
        start = time.perf_counter_ns()
        sess.run(None, feeds)
        times.append(time.perf_counter_ns() - start)
    return times


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", required=True)
    p.add_argument("--worker", required=True)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--budget", type=float, default=0.08)
    p.add_argument("--only", default="", help="comma-separated model names")
    p.add_argument(
        "--settle",
        type=float,
        default=0.1,
        help="seconds to wait after each batch before the other engine's: ONNX "
        "Runtime's idle threads keep spinning for ~30 ms after its last run, "
        "which took a core from whichever batch came next",
    )
    a = p.parse_args()
    names = sorted(os.listdir(a.models))
    if a.only:
        names = [n for n in names if n in a.only.split(",")]
    folders = [os.path.join(a.models, n) for n in names]
    print(f"onnxruntime {ort.__version__}, onnx {onnx.__version__}, numpy {np.__version__}")
    print()
    print("| model | threads | ORT median | Flotilla median | ratio | max abs diff |")
    print("|---|---|---|---|---|---|")
    for threads in [int(t) for t in a.threads.split(",")]:
        worker = Worker(a.worker, folders, threads)
        sessions = []
        for folder in folders:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            sess = ort.InferenceSession(
                os.path.join(folder, "model.onnx"), opts, providers=["CPUExecutionProvider"]
            )
            sessions.append((sess, read_inputs(folder, sess)))
        for i, (name, (sess, feeds)) in enumerate(zip(names, sessions)):
            # Warm up and size the batches from the slower engine.
            ort_t = statistics.median(ort_run(sess, feeds, 5))
            flo_t = statistics.median(worker.run(i, 5))
            count = max(1, int(a.budget * 1e9 / max(ort_t, flo_t)))
            ort_all, flo_all = [], []
            for r in range(a.rounds):
                if r % 2 == 0:
                    ort_all += ort_run(sess, feeds, count)
                    time.sleep(a.settle)
                    flo_all += worker.run(i, count)
                else:
                    flo_all += worker.run(i, count)
                    time.sleep(a.settle)
                    ort_all += ort_run(sess, feeds, count)
                time.sleep(a.settle)
            o, f = statistics.median(ort_all), statistics.median(flo_all)
            print(
                f"| {name} | {threads} | {fmt(o)} | {fmt(f)} | {f / o:.2f}x "
                f"| {worker.diffs[i]:.1e} |",
                flush=True,
            )
        worker.close()


def fmt(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e3:.1f} µs"


if __name__ == "__main__":
    main()
