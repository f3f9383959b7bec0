"""The study spec: its schema and validation, grid expansion, and the model size ladders."""
