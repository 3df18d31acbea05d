"""The laptop the collector runs on: its clock, its sleep, its service manager, its set-up check.

Nothing here decides a screening result; it keeps the machine fit to record one (awake, with a
synchronised clock, supervised) and tells a site what to fix before a night starts.
"""
