"""The ward's night: alerts a person must see (evaluated by the daemon) and the technician's night notes."""
