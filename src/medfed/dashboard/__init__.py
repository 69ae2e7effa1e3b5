"""The web dashboard: the coordinator's HTTPS pages for people, and each node's local page.

Sits above the coordinator and the node (it reads their state in-process) and below the CLI,
which starts it beside the gRPC service.
"""
