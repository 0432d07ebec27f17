"""Training data: bitext readers, length-bucketed batches, the teacher token cache and the
offline English–Chichewa Bible build."""
