"""gRPC serving: thin servicers over `cascade/` (stage 1 -> LVM -> TMD) and the cascade front.

`python -m serving.server` starts the set from `serving/serving.yaml`; `python -m serving.client`
queries it. Dependencies point one way: serving imports cascade and the code generated from
`protos/` (into `serving/_gen/`), and nothing imports serving.
"""
