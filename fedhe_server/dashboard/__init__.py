"""The server's read-only web dashboard: devices, jobs, rounds and per-step overheads."""
