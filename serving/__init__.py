"""gRPC serving: thin servicers over `cascade/` (stage 1 -> LVM -> TMD) and the cascade front.

Not built yet. Serving reads `runs/<bank>/deploy.json` (written by `make train-v4`) to choose
stage 1: the v4 query tower from its `best.pt`, or the exp-weighted heuristic when v4 missed its
gate. Dependencies point one way: serving imports cascade and the generated protos, nothing
imports serving.
"""
