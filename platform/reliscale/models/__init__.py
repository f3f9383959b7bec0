"""Trial models built from a ladder size and a task, and their reliability heads."""
