"""A trial's evaluation suite: evaluators per task kind, reliability metrics, few-shot probes, plots."""
