"""The driver process: runs a study (Ray Tune over trials), its live view, status and plan."""
