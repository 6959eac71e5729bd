"""Scorers run models inside worker processes; the gateway's front process never runs a model.

`protocol` is the wire format between the two sides, `worker` the process main loop, and
`onnx` / `python` the runtimes a model version can use.
"""
