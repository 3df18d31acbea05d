"""Which outages end a sample's hold: one vocabulary for the recorder, the report and the export.

An outage that interrupts the recording (link lost, the Bluetooth adapter off or
asleep, silent link, daemon down, a recorder restart, a paused session) ends the zero-order hold of the last
sample, so the time after it counts in neither numerator nor denominator.
Lost packets are stored as gaps too, but within ``max_hold_s`` they are held
over by the definition (oximetry.md), so they do not break it.
"""

from __future__ import annotations

BREAKING_CAUSES = frozenset({"device_disconnected", "adapter_off", "watchdog_silence", "daemon_down", "recorder_error",
                             "session_paused"})
