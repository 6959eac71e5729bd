"""The load-test harness: open-loop and closed-loop load, search mode, reports, `make bench`.

See docs/load-testing.md.
"""
