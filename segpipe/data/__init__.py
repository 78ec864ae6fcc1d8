"""From data/raw to tf.data batches: layouts, decoding, rows, balancing, augmentation, the input stream."""
