"""Dataset preparation and readers: token shards for text corpora, image folders."""
