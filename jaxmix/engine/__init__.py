"""The EM engine and its drivers: one compiled fit, restarts, batches, sweeps."""
