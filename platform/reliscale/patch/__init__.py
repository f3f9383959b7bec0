"""PAINT: weight interpolation between a trained and a fine-tuned checkpoint, its sweep and stage."""
