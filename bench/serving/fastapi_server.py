#!/usr/bin/env python3
"""The baseline of the serving benchmark (bench/serving/run.sh, issue 6): the
same ONNX model behind FastAPI + uvicorn + ONNX Runtime, at the same Open
Inference Protocol v2 path and with the same JSON shapes as the agent, so one
client drives both.

    fastapi_server.py serve --model mlp.onnx --name mlp --port PORT [--workers N]
    fastapi_server.py time-session --model mlp.onnx --body body.json [--secs S] [--warmup-secs W]

`serve` answers `POST /v2/models/NAME/infer` with a JSON body
`{"inputs": [{"name", "shape", "datatype": "FP32", "data": [flat numbers]}]}` and
returns `{"model_name", "model_version", "outputs": [{"name", "datatype": "FP32",
"shape", "data"}]}`, plus `GET /v2/health/ready` (200 once a worker serves).
Errors are 400 with `{"error": ...}`. The caller picks a free port and polls
readiness.

`time-session` times `InferenceSession.run` alone on the inputs of a request body
(one thread, back to back) and prints one JSON line like the agent's
`bare_run time`: the ONNX Runtime counterpart of the bare executor call.

Design: the handler is the fastest plain FastAPI shape, not a tutorial one. It
is `async def`, reads the raw body and parses it with `json.loads` (a pydantic
request model would cost tens of microseconds more per request), and runs the
session inline on the event loop: one run of the benchmark MLP takes a few
microseconds, less than a hop to the thread pool that a sync `def` handler
would make. The session uses one intra-op thread, one inter-op thread and
sequential execution, as the agent's executor runs with RAYON_NUM_THREADS=1.
One uvicorn worker is one process, like the agent; `--workers N` runs N
processes (each with its own session) on the same port, for an extra row.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort


def session(model_path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])


def feeds_of(body):
    """The FP32 inputs of an OIP v2 JSON request body, as numpy arrays by name."""
    feeds = {}
    for inp in body["inputs"]:
        if inp.get("datatype") != "FP32":
            raise ValueError(f"input {inp.get('name')!r}: only FP32 is served here")
        feeds[inp["name"]] = np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])
    return feeds


def make_app(model_path, name):
    # Imported here so that `time-session` needs only onnxruntime and numpy.
    from fastapi import FastAPI, Request, Response

    sess = session(model_path)
    output_names = [o.name for o in sess.get_outputs()]
    app = FastAPI()

    def error(status, message):
        return Response(json.dumps({"error": message}), status_code=status, media_type="application/json")

    @app.get("/v2/health/ready")
    async def ready():
        return Response(b"", status_code=200)

    @app.post(f"/v2/models/{name}/infer")
    async def infer(request: Request):
        try:
            feeds = feeds_of(json.loads(await request.body()))
            outs = sess.run(output_names, feeds)
        except Exception as e:  # noqa: BLE001 - any bad request is a 400 with its reason
            return error(400, f"{type(e).__name__}: {e}")
        answer = {
            "model_name": name,
            "model_version": "1",
            "outputs": [
                {"name": n, "datatype": "FP32", "shape": list(o.shape), "data": o.ravel().tolist()}
                for n, o in zip(output_names, outs)
            ],
        }
        return Response(json.dumps(answer), media_type="application/json")

    return app


def app_factory():
    """uvicorn's factory for worker processes (`--workers N` re-imports this module)."""
    return make_app(os.environ["FASTAPI_BENCH_MODEL"], os.environ["FASTAPI_BENCH_NAME"])


def serve(args):
    import uvicorn

    os.environ["FASTAPI_BENCH_MODEL"] = os.path.abspath(args.model)
    os.environ["FASTAPI_BENCH_NAME"] = args.name
    # Fail here, in the parent, on a model ONNX Runtime cannot load.
    session(args.model)
    uvicorn.run(
        "fastapi_server:app_factory",
        factory=True,
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        log_level="warning",
        access_log=False,
        # "auto" takes uvloop and httptools when installed (uvicorn[standard]),
        # the fastest setup uvicorn offers.
        loop="auto",
        http="auto",
        app_dir=os.path.dirname(os.path.abspath(__file__)),
    )


def percentile_us(sorted_ns, p):
    rank = max(1, min(len(sorted_ns), int(np.ceil(p / 100 * len(sorted_ns)))))
    return round(sorted_ns[rank - 1] / 1e3, 2)


def time_session(args):
    sess = session(args.model)
    with open(args.body) as f:
        feeds = feeds_of(json.load(f))
    names = [o.name for o in sess.get_outputs()]
    sess.run(names, feeds)
    warm_until = time.perf_counter() + args.warmup_secs
    while time.perf_counter() < warm_until:
        sess.run(names, feeds)
    until = time.perf_counter_ns() + int(args.secs * 1e9)
    times = []
    clock = time.perf_counter_ns
    while True:
        start = clock()
        if start >= until:
            break
        sess.run(names, feeds)
        times.append(clock() - start)
    times.sort()
    print(
        json.dumps(
            {
                "runs": len(times),
                "secs": args.secs,
                "p50_us": percentile_us(times, 50),
                "p90_us": percentile_us(times, 90),
                "p99_us": percentile_us(times, 99),
                "max_us": percentile_us(times, 100),
                "mean_us": round(sum(times) / len(times) / 1e3, 2),
                "onnxruntime": ort.__version__,
            }
        )
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--model", required=True)
    s.add_argument("--name", default="mlp")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--workers", type=int, default=1)
    t = sub.add_parser("time-session")
    t.add_argument("--model", required=True)
    t.add_argument("--body", required=True)
    t.add_argument("--secs", type=float, default=10.0)
    t.add_argument("--warmup-secs", type=float, default=2.0)
    args = p.parse_args()
    if args.command == "serve":
        if args.workers < 1:
            sys.exit("--workers must be at least 1")
        serve(args)
    else:
        time_session(args)


if __name__ == "__main__":
    main()
