"""Where a run executes, resolved once: device and precision (machine), the dtype probe, threads and
cores, torchrun (distributed)."""
