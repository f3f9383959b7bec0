"""Code that runs inside a Ray Train worker: the training loop, DeepSpeed engine, objectives."""
