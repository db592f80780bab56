"""The race lab, `rt chaos` (LAB.md): a fault proxy, drivers for clients under test,
and a checker that judges a recorded history.

It sits beside the server and talks to it over the wire only: nothing here
imports `rt.store`, `rt.hub`, `rt.service` or `rt.web`.
"""
