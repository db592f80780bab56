"""`rt.client`: a Python client of rt's wire protocol (PROTOCOL.md), for bots,
integrations and the race lab's built-in clients.

It talks to a server over the wire only (trio, h11, wsproto): nothing here
imports `rt.store`, `rt.hub`, `rt.service` or `rt.web`.
"""
