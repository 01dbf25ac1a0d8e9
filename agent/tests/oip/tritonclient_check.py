"""Drives a Flotilla scoring server with NVIDIA's tritonclient[http], unchanged.

Usage: tritonclient_check.py HOST:PORT MODEL INPUT.f32 ROWS WIDTH

Reads ROWS x WIDTH little-endian float32 features from INPUT.f32, checks health,
readiness and metadata, scores them with binary tensors both ways and with JSON
tensors, checks that a wrong datatype comes back as an error naming the input,
and prints {"binary": [...], "json": [...]} (flat outputs) on stdout for the
caller to compare with a direct executor run.
"""

import json
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def main():
    url, model, path, rows, width = sys.argv[1:6]
    rows, width = int(rows), int(width)
    x = np.fromfile(path, dtype="<f4").reshape(rows, width)
    client = httpclient.InferenceServerClient(url=url)

    assert client.is_server_live(), "server not live"
    assert client.is_server_ready(), "server not ready"
    assert client.is_model_ready(model), "model not ready"
    meta = client.get_model_metadata(model)
    assert meta["name"] == model, meta
    assert meta["platform"] == "onnx", meta
    inp = meta["inputs"][0]
    assert inp["datatype"] == "FP32" and inp["shape"] == [-1, width], meta
    out_name = meta["outputs"][0]["name"]
    server = client.get_server_metadata()
    assert server["name"] == "flotilla-agent", server

    answers = {}
    for mode, binary in (("binary", True), ("json", False)):
        i = httpclient.InferInput(inp["name"], list(x.shape), "FP32")
        i.set_data_from_numpy(x, binary_data=binary)
        o = httpclient.InferRequestedOutput(out_name, binary_data=binary)
        result = client.infer(model, [i], outputs=[o], request_id="t-" + mode)
        y = result.as_numpy(out_name)
        assert y.shape[0] == rows, y.shape
        response = result.get_response()
        assert response["model_name"] == model, response
        assert response["id"] == "t-" + mode, response
        answers[mode] = [float(v) for v in y.reshape(-1)]

    # No outputs named: the client asks for every output in binary.
    i = httpclient.InferInput(inp["name"], list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    y = client.infer(model, [i]).as_numpy(out_name)
    assert [float(v) for v in y.reshape(-1)] == answers["binary"]

    bad = httpclient.InferInput(inp["name"], list(x.shape), "FP64")
    bad.set_data_from_numpy(x.astype(np.float64))
    try:
        client.infer(model, [bad])
        raise AssertionError("FP64 input was accepted")
    except InferenceServerException as e:
        assert "expected datatype FP32, got FP64" in e.message(), e.message()

    print(json.dumps(answers))


if __name__ == "__main__":
    main()
