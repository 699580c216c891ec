"""Quality metrics, per-frame reports and plots."""
